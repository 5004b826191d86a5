//! What makes an answer sell, and keeps it within Meta's rules: the prompt and the shape of a
//! reply (`reply`), the model (`llm`), and Meta's rate limits and pauses (`graph`).

pub mod embed;
pub mod graph;
pub mod llm;
pub mod reply;
