//! Text for the encoder: the Qwen2 tokenizer ([`tokenizer`]) and the pipelines' prompt templates
//! ([`templates`]).

pub mod templates;
pub mod tokenizer;

pub use templates::Template;
pub use tokenizer::Qwen2Tokenizer;
