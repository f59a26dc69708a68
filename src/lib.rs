pub mod events;
pub mod projection;
