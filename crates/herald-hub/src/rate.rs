//! A token bucket for per-connection rate limits.

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `per_sec` tokens a second, bursts up to the same number.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        TokenBucket {
            capacity: per_sec,
            per_sec,
            tokens: per_sec,
            last: Instant::now(),
        }
    }

    /// Changes the rate (and burst) when it differs, keeping the tokens left within the new
    /// burst: a changed limit applies from the next take.
    pub fn set_rate(&mut self, per_sec: u32) {
        let per_sec = f64::from(per_sec.max(1));
        if per_sec != self.per_sec {
            self.per_sec = per_sec;
            self.capacity = per_sec;
            self.tokens = self.tokens.min(per_sec);
        }
    }

    /// Takes a token if one is left.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ten_per_second() {
        let mut b = TokenBucket::new(10);
        assert_eq!((0..15).filter(|_| b.try_take()).count(), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..15).filter(|_| b.try_take()).count(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..15).filter(|_| b.try_take()).count(), 10);
    }
}
