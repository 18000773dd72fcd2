//! Connection life-cycle steps shared by the scenarios: open and wait for
//! `pusher:connection_established`, subscribe and wait for `subscription_succeeded`, and keep
//! the connection alive (answer pings) while doing so.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::timeout;

use crate::pusher::{self, Event};
use crate::target::Target;
use crate::ws::Conn;

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers pings; turns closes and errors into `Err`. Returns the event for the caller otherwise.
pub async fn keepalive(conn: &mut Conn, event: Event) -> Result<Option<Event>> {
    match event {
        Event::WsPing(data, n) => conn.send_pong(&data[..n as usize]).await?,
        Event::PusherPing => conn.send_text(pusher::PONG).await?,
        Event::Closed(code) => bail!("closed by server with code {code}"),
        Event::Error(code) => bail!("pusher:error {code:?}"),
        other => return Ok(Some(other)),
    }
    Ok(None)
}

/// Opens connection `i` to node `node` and returns it with its socket id.
pub async fn establish(target: &Target, node: usize, i: usize) -> Result<(Conn, String)> {
    let seed = (i as u32).wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
    let mut conn = Conn::open(&target.endpoints[node], target.source_for(node, i), seed).await?;
    let socket_id = timeout(STEP_TIMEOUT, async {
        loop {
            let event = conn.next_event().await?;
            if let Some(Event::ConnectionEstablished(id)) = keepalive(&mut conn, event).await? {
                return Ok::<_, anyhow::Error>(id);
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no pusher:connection_established within {STEP_TIMEOUT:?}"))??;
    Ok((conn, socket_id))
}

/// Sends `pusher:subscribe` (signed where needed) and waits for `subscription_succeeded`.
pub async fn subscribe(
    conn: &mut Conn,
    target: &Target,
    socket_id: &str,
    channel: &str,
    user_id: Option<&str>,
) -> Result<()> {
    let frame = pusher::subscribe(&target.creds, socket_id, channel, user_id);
    conn.send_text(frame.as_bytes()).await?;
    timeout(STEP_TIMEOUT, async {
        loop {
            let event = conn.next_event().await?;
            if let Some(Event::SubscriptionSucceeded) = keepalive(conn, event).await? {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no subscription_succeeded within {STEP_TIMEOUT:?}"))?
}
