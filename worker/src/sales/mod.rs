//! What makes an answer sell, and keeps it within Meta's rules: the prompt and the shape of a
//! reply (`reply`), the model (`llm`) and its structured answer (`answer`), the price guard
//! (`guard`), the query embeddings of catalog search (`embed`), the parts the customer receives — text, product cards, quick replies (`cards`) —
//! what a message came with — a story, a shared post, a link's ref, a photo (`context`) —
//! and Meta's rate limits and pauses (`graph`).

pub mod answer;
pub mod cards;
pub mod context;
pub mod embed;
pub mod graph;
pub mod guard;
pub mod llm;
pub mod reply;
