//! Running several ringpush nodes as one Pusher server over a broker (Redis): the messages
//! nodes exchange. (The broker side-car and the node membership build on this.)

pub mod wire;
