//! Membership changes that are ours to make or another server's (Client-Server API,
//! "Room membership"; Server-Server API, "Joining Rooms", "Leaving Rooms", "Knocking"):
//! a room one of our users is in is changed locally; one we know only from an invite, or
//! not at all, goes through a server in it ([`crate::handshake`]).

use ganglion_core::{Error, Result};
use ruma::{OwnedRoomId, RoomId, RoomOrAliasId, UserId};

use crate::{Rooms, handshake, storage_error};

impl Rooms {
    /// A room id, or an alias resolved (ours from the database, another server's over
    /// federation), with the servers that can be asked about it.
    async fn resolve_room_and_servers(
        &self,
        target: &RoomOrAliasId,
    ) -> Result<(OwnedRoomId, Vec<String>)> {
        let alias = match <&RoomId>::try_from(target) {
            Ok(id) => return Ok((id.to_owned(), Vec::new())),
            Err(alias) => alias,
        };
        if alias.server_name() != self.server_name()
            && let Some(fed) = &self.inner.federation
        {
            return crate::remote_directory::query_directory(fed, alias).await;
        }
        let (room_id, _) = self
            .inner
            .store
            .select_alias(alias.as_str())
            .await
            .map_err(storage_error)?
            .ok_or_else(|| Error::not_found("room alias not found"))?;
        let room_id = OwnedRoomId::try_from(room_id)
            .map_err(|_| Error::internal("stored room id is invalid"))?;
        Ok((room_id, Vec::new()))
    }

    /// Joins `user` to a room by id or alias (`/join/{roomIdOrAlias}`): the alias
    /// resolved, then [`Rooms::join_anywhere`] through its servers and `via`.
    pub async fn join_by_id_or_alias(
        &self,
        target: &RoomOrAliasId,
        user: &UserId,
        reason: Option<&str>,
        via: &[String],
    ) -> Result<OwnedRoomId> {
        let (room_id, mut servers) = self.resolve_room_and_servers(target).await?;
        servers.extend(via.iter().cloned());
        self.join_anywhere(&room_id, user, reason, servers).await
    }

    /// Joins a room we know, or one we do not through the servers given (and the room
    /// id's own server, for versions whose ids carry one).
    pub async fn join_anywhere(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        mut via: Vec<String>,
    ) -> Result<OwnedRoomId> {
        let known = self
            .inner
            .store
            .select_room(room_id.as_str())
            .await
            .map_err(storage_error)?
            .is_some();
        // A room we are in (any of our users is joined) is joined locally; one we know
        // only from an invite, or not at all, through another server.
        if known && (self.inner.federation.is_none() || self.has_local_members(room_id).await?) {
            return Ok(self.join(room_id, user, reason).await?.room_id);
        }
        let Some(fed) = &self.inner.federation else {
            return Err(Error::not_found("unknown room (federation is off)"));
        };
        if known {
            let membership = self
                .inner
                .store
                .select_membership(room_id.as_str(), user.as_str())
                .await
                .map_err(storage_error)?;
            if membership.as_ref().is_some_and(|(m, _)| m == "ban") {
                return Err(Error::forbidden("you are banned from this room"));
            }
            // The inviter's server can let us in.
            if let Some((m, event_id)) = membership
                && m == "invite"
            {
                via.extend(self.servers_of_invite(room_id, &event_id).await?);
            }
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_string());
        }
        via.dedup();
        handshake::join_remote(fed, self, room_id, user, &via).await
    }

    /// The servers that can answer for an invite to a room we do not have: the
    /// inviter's, then the room id's own (room versions whose ids name one).
    async fn servers_of_invite(
        &self,
        room_id: &RoomId,
        invite_event_id: &str,
    ) -> Result<Vec<String>> {
        let mut via = Vec::new();
        if let Some(ev) = self
            .inner
            .store
            .select_event(invite_event_id)
            .await
            .map_err(storage_error)?
            && let Ok(inviter) = UserId::parse(&ev.sender)
        {
            via.push(inviter.server_name().to_string());
        }
        if let Some(server) = room_id.server_name() {
            via.push(server.to_string());
        }
        via.dedup();
        Ok(via)
    }

    /// Leaves a room, or rejects an invite: an invite to a room none of our users is in
    /// is rejected through the inviter's server (we cannot build events in a room whose
    /// state we do not have); everything else is a local leave.
    pub async fn leave_anywhere(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        if let Some(fed) = &self.inner.federation
            && let Some((m, event_id)) = self
                .inner
                .store
                .select_membership(room_id.as_str(), user.as_str())
                .await
                .map_err(storage_error)?
            && m == "invite"
            && !self.has_local_members(room_id).await?
        {
            let via = self.servers_of_invite(room_id, &event_id).await?;
            return handshake::leave_remote(fed, self, room_id, user, &via).await;
        }
        self.leave(room_id, user, reason).await?;
        Ok(())
    }

    /// Knocks on a room by id or alias (`/knock/{roomIdOrAlias}`): locally on a room
    /// one of our users is in, else through the alias's servers, `via` and the room id's
    /// own server. Returns the room id.
    pub async fn knock_anywhere(
        &self,
        target: &RoomOrAliasId,
        user: &UserId,
        reason: Option<&str>,
        via: &[String],
    ) -> Result<OwnedRoomId> {
        let (room_id, mut servers) = self.resolve_room_and_servers(target).await?;
        // A room none of our users is in is knocked on through another server.
        if let Some(fed) = &self.inner.federation
            && !self.has_local_members(&room_id).await?
        {
            servers.extend(via.iter().cloned());
            if let Some(server) = room_id.server_name() {
                servers.push(server.to_string());
            }
            servers.dedup();
            handshake::knock_remote(fed, self, &room_id, user, &servers).await?;
            return Ok(room_id);
        }
        Ok(self.knock(&room_id, user, reason).await?.room_id)
    }
}
