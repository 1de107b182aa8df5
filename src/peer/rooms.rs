//! The rooms the person asked to be in, kept in the store so a restarted
//! peer is back in them, and joined again after a router restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::names::Room;
use crate::store::{Store, StoreError};

/// Cheap to clone; the map is a cache of the store's `rooms` table.
#[derive(Clone)]
pub struct Rooms {
    store: Store,
    /// Room key → room. Never held across an `.await`.
    wanted: Arc<Mutex<BTreeMap<String, Room>>>,
}

impl Rooms {
    /// Loads the rooms kept in `store`. A name that no longer parses (kept
    /// by an older parley with other rules) is skipped with a warning.
    pub async fn load(store: Store) -> Result<Rooms, StoreError> {
        let mut wanted = BTreeMap::new();
        for name in store.rooms().await? {
            match Room::parse(&name) {
                Ok(room) => {
                    wanted.insert(room.key(), room);
                }
                Err(err) => tracing::warn!(room = %name, cause = %err, "skipping a kept room"),
            }
        }
        Ok(Rooms {
            store,
            wanted: Arc::new(Mutex::new(wanted)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Room>> {
        // A plain map: a panic elsewhere cannot leave it half-updated.
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn add(&self, room: &Room) -> Result<(), StoreError> {
        self.lock().insert(room.key(), room.clone());
        self.store.rooms_add(room.as_str()).await
    }

    pub async fn remove(&self, room: &str) -> Result<(), StoreError> {
        self.lock().remove(&room.to_ascii_lowercase());
        self.store.rooms_remove(room).await
    }

    pub fn contains(&self, room: &str) -> bool {
        self.lock().contains_key(&room.to_ascii_lowercase())
    }

    pub fn all(&self) -> Vec<Room> {
        self.lock().values().cloned().collect()
    }
}
