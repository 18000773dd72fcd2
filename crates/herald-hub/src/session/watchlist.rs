//! Watchlists: a signed-in user's watched users, their online state and its changes.

use herald_protocol::{server, ChannelName, ErrorCode};

use super::{Session, Subscription};

impl Session {
    /// Starts watching users: listens to their online changes and sends their current state.
    pub(super) async fn watch(&mut self, ids: &[String]) {
        let app = self.conn.app.get();
        let mut watched = Vec::new();
        for id in ids {
            let Ok(channel) = ChannelName::watchlist(id) else {
                continue;
            };
            if self.subscriptions.contains_key(&channel) {
                continue;
            }
            // Watched users take channel slots like any subscription.
            if self.subscriptions.len() >= app.max_channels_per_connection {
                self.conn.send_error(
                    Some(ErrorCode::WatchlistLimit.as_u16()),
                    &format!(
                        "Watchlist cut short: the connection holds its maximum of {} channels",
                        app.max_channels_per_connection
                    ),
                );
                break;
            }
            self.hub.add_subscriber(&self.conn, &channel);
            self.subscriptions.insert(
                channel.clone(),
                Subscription {
                    presence_user: None,
                },
            );
            if let Err(e) = self.hub.broker.await_interest(&app.id, &channel).await {
                tracing::warn!(app = %app.id, error = %e, "watchlist subscription not confirmed");
            }
            watched.push(id.clone());
        }
        if watched.is_empty() {
            return;
        }
        match self.hub.cluster.users_online(&app.id, &watched).await {
            Ok(states) => {
                let (mut online, mut offline) = (Vec::new(), Vec::new());
                for (id, is_online) in watched.into_iter().zip(states) {
                    if is_online {
                        online.push(id)
                    } else {
                        offline.push(id)
                    }
                }
                self.conn.send(server::watchlist_events(&online, &offline));
            }
            Err(e) => tracing::warn!(app = %app.id, error = %e, "watchlist state not read"),
        }
    }
}
