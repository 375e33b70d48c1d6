//! ferry-api: the HTTP contract (DESIGN §4, STYLE habit 9). Request and response types of the
//! Administration Server (`/api/v1`) and the Node Manager (`/nm/v1`), the messages a server
//! sends its Node Manager over the local channel, and typed clients. Add messages rather than
//! change them: scripts and other versions rely on these shapes.

pub mod client;
pub mod events;
pub mod types;

pub use client::{
    path_segment, AdminClient, ClientError, EventsPage, NmClient, EVENTS_KEPT, EVENTS_NEWEST_HEADER,
    EVENTS_OLDEST_HEADER, EVENTS_PAGE, EVENTS_PAGE_MAX,
};
pub use events::EventSink;
pub use types::*;
