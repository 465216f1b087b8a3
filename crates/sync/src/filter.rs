//! The parts of a sync filter the server applies (spec: "Filtering").

use ganglion_rooms::reads::EventFilter;
use ruma::api::client::filter::{FilterDefinition, RoomEventFilter};

/// A sync filter, reduced to what we apply.
#[derive(Debug, Clone)]
pub struct SyncFilter {
    /// Timeline events per room.
    pub timeline_limit: usize,
    /// Which timeline events.
    pub timeline: EventFilter,
    /// Which state events; `lazy_load_members` applies here.
    pub state: EventFilter,
    /// Whether left rooms appear in an initial sync.
    pub include_leave: bool,
    /// Rooms to include (`None` = all).
    pub rooms: Option<Vec<String>>,
    /// Rooms to exclude.
    pub not_rooms: Vec<String>,
    /// Account data types excluded entirely (`*` = all).
    pub account_data_off: bool,
    /// `unread_thread_notifications` (of the timeline filter): count threads apart.
    pub thread_counts: bool,
}

impl Default for SyncFilter {
    fn default() -> Self {
        SyncFilter {
            timeline_limit: 10,
            timeline: EventFilter::default(),
            state: EventFilter::default(),
            include_leave: false,
            rooms: None,
            not_rooms: Vec::new(),
            account_data_off: false,
            thread_counts: false,
        }
    }
}

fn event_filter(f: &RoomEventFilter) -> EventFilter {
    EventFilter::from_ruma(f)
}

impl SyncFilter {
    /// From a client's filter definition.
    pub fn from_definition(def: &FilterDefinition) -> SyncFilter {
        let room = &def.room;
        SyncFilter {
            timeline_limit: room
                .timeline
                .limit
                .map_or(10, |l| usize::try_from(u64::from(l)).unwrap_or(10))
                .clamp(0, 1000),
            timeline: event_filter(&room.timeline),
            state: event_filter(&room.state),
            include_leave: room.include_leave,
            rooms: room
                .rooms
                .as_ref()
                .map(|r| r.iter().map(ToString::to_string).collect()),
            not_rooms: room.not_rooms.iter().map(ToString::to_string).collect(),
            account_data_off: def.account_data.not_types.iter().any(|t| t == "*"),
            thread_counts: room.timeline.unread_thread_notifications,
        }
    }

    /// Whether a room passes `rooms`/`not_rooms`.
    pub fn room_allowed(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room_id))
            && !self.not_rooms.iter().any(|x| x == room_id)
    }
}
