//! Rooms as this node knows them: membership (loaded from the store on first use and kept in
//! step with every join and leave made through it, and in a cluster with those of other nodes).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tether_proto::ErrorCode;
use thiserror::Error;

use crate::store::{Store, StoreError};

/// Why a room operation was refused.
#[derive(Debug, Error)]
pub enum RoomError {
    /// No such room (and rooms are not created on join).
    #[error("no room `{0}`")]
    NoSuchRoom(String),
    /// The user is not a member.
    #[error("not a member of `{0}`")]
    NotAMember(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl RoomError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RoomError::NoSuchRoom(_) => ErrorCode::NoSuchRoom,
            RoomError::NotAMember(_) => ErrorCode::NotAMember,
            RoomError::Store(_) => ErrorCode::Unavailable,
        }
    }
}

/// Membership of the rooms in use on this node.
pub struct Rooms {
    store: Arc<dyn Store>,
    auto_create: bool,
    /// room -> members; replaced (not edited) on change, so fan-out holds a snapshot.
    members: Mutex<HashMap<String, Arc<HashSet<String>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rooms {
    /// Rooms over `store`; `auto_create`: a join creates a missing room.
    pub fn new(store: Arc<dyn Store>, auto_create: bool) -> Self {
        Rooms { store, auto_create, members: Mutex::new(HashMap::new()) }
    }

    /// The members of `room`, or `None` when it does not exist.
    pub async fn members(&self, room: &str) -> Result<Option<Arc<HashSet<String>>>, StoreError> {
        if let Some(m) = lock(&self.members).get(room) {
            return Ok(Some(m.clone()));
        }
        if self.store.room_head(room).await?.is_none() {
            return Ok(None);
        }
        let loaded: Arc<HashSet<String>> = Arc::new(self.store.members(room).await?.into_iter().collect());
        // A join or leave that raced with the load has updated the entry; keep theirs.
        Ok(Some(lock(&self.members).entry(room.to_owned()).or_insert(loaded).clone()))
    }

    /// Whether `user` is a member of `room` (false if the room does not exist).
    pub async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.members(room).await?.is_some_and(|m| m.contains(user)))
    }

    /// Applies a membership change made elsewhere (another node) to the cached membership.
    pub fn changed_elsewhere(&self, room: &str, user: &str, member: bool) {
        self.edit(room, |m| {
            if member {
                m.insert(user.to_owned());
            } else {
                m.remove(user);
            }
        });
    }

    /// Forgets the cached membership of `room` (deleted elsewhere).
    pub fn forget(&self, room: &str) {
        lock(&self.members).remove(room);
    }

    fn edit(&self, room: &str, f: impl FnOnce(&mut HashSet<String>)) {
        let mut all = lock(&self.members);
        if let Some(current) = all.get_mut(room) {
            let mut next = (**current).clone();
            f(&mut next);
            *current = Arc::new(next);
        }
    }

    /// Creates a room; false if it existed.
    pub async fn create(&self, room: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.store.create_room(room, now_ms).await
    }

    /// Deletes a room; returns its former members.
    pub async fn delete(&self, room: &str) -> Result<Option<Vec<String>>, StoreError> {
        let Some(members) = self.members(room).await? else { return Ok(None) };
        self.store.delete_room(room).await?;
        lock(&self.members).remove(room);
        Ok(Some(members.iter().cloned().collect()))
    }

    /// Makes `user` a member; returns (newly a member, room head).
    pub async fn join(&self, room: &str, user: &str, now_ms: u64) -> Result<(bool, u64), RoomError> {
        let head = match self.store.room_head(room).await? {
            Some(h) => h,
            None if self.auto_create => {
                self.store.create_room(room, now_ms).await?;
                self.store.room_head(room).await?.unwrap_or(0)
            }
            None => return Err(RoomError::NoSuchRoom(room.to_owned())),
        };
        let _ = self.members(room).await?;
        let new = self.store.add_member(room, user, now_ms).await?;
        self.edit(room, |m| {
            m.insert(user.to_owned());
        });
        Ok((new, head))
    }

    /// Ends `user`'s membership; false if there was none.
    pub async fn leave(&self, room: &str, user: &str) -> Result<bool, RoomError> {
        if self.members(room).await?.is_none() {
            return Err(RoomError::NoSuchRoom(room.to_owned()));
        }
        let was = self.store.remove_member(room, user).await?;
        self.edit(room, |m| {
            m.remove(user);
        });
        Ok(was)
    }
}
