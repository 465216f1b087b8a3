//! Operations on one's own account (spec: Client-Server API, "Account management"):
//! changing the password and deactivating. Both re-check the password through UIA.

use ganglion_core::{Error, Result};
use ganglion_http::Identity;
use ganglion_rooms::storage_error;
use ruma::{OwnedRoomId, api::client::uiaa::AuthData};

use crate::{Accounts, password, uia::password_flows};

/// Memberships a deactivated user gives up: joined rooms, pending invites and knocks.
const MEMBERSHIPS_TO_LEAVE: [&str; 3] = ["join", "invite", "knock"];

impl Accounts {
    /// `POST /account/password`. The new password is checked against the policy before UIA
    /// (as Synapse's `PasswordRestServlet`). With `logout_devices`, every other device and
    /// its tokens go (spec: "the user's other access tokens, and their associated devices,
    /// should be revoked").
    pub(crate) async fn change_password(
        &self,
        who: &Identity,
        new_password: String,
        logout_devices: bool,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        password::check_policy(&new_password, self.inner.auth.min_password_length)?;
        let completed = self
            .user_interactive_auth(
                "change_password",
                Some(&who.user_id),
                &password_flows(),
                auth,
            )
            .await?;
        // Several writes: run them to the end even if the client hangs up.
        let this = self.clone();
        let who = who.clone();
        detached(async move {
            let hash = password::hash(&new_password).await?;
            let store = &this.inner.store;
            store
                .update_password(who.user_id.as_str(), &hash)
                .await
                .map_err(storage_error)?;
            if logout_devices {
                this.delete_other_devices(&who.user_id, Some(&who.device_id))
                    .await?;
            }
            this.finish_uia(&completed).await
        })
        .await
    }

    /// `POST /account/deactivate`: the account is locked first (password, devices and
    /// tokens gone), then leaves every room it is joined to, invited to or knocking on,
    /// one `Rooms::leave` each. A room that refuses is logged and skipped.
    pub(crate) async fn deactivate(&self, who: &Identity, auth: Option<&AuthData>) -> Result<()> {
        let completed = self
            .user_interactive_auth("deactivate", Some(&who.user_id), &password_flows(), auth)
            .await?;
        let this = self.clone();
        let user = who.user_id.clone();
        detached(async move {
            let store = &this.inner.store;
            store.deactivate_user(user.as_str()).await.map_err(storage_error)?;
            let rooms = store.select_user_rooms(user.as_str(), &MEMBERSHIPS_TO_LEAVE).await.map_err(storage_error)?;
            for (room_id, ..) in rooms {
                let Ok(room_id) = OwnedRoomId::try_from(room_id.as_str()) else {
                    tracing::error!(room_id, "stored room id is invalid");
                    continue;
                };
                if let Err(e) = this.inner.rooms.leave(&room_id, &user, None).await {
                    tracing::warn!(%room_id, %user, error = %e, "deactivated user could not leave a room");
                }
            }
            tracing::info!(%user, "deactivated");
            this.finish_uia(&completed).await
        })
        .await
    }
}

/// Runs a multi-write operation on its own task and waits for it, so a client that hangs
/// up mid-way does not leave it half done.
async fn detached<F>(work: F) -> Result<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .map_err(|e| Error::internal(format!("account task failed: {e}")))?
}
