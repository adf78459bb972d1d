//! What the integration tests that run `wrpo-score` share: their prompts,
//! and reading a run's outcome (`run`, every binary's tests' copy).

use wrpo_common::{
    prompts::{Prompt, Split},
    Message, Role,
};

/// Train prompts p0, p1, ...: one user turn each, from (question, reference answer).
pub fn train_prompts<'a>(questions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Prompt> {
    questions
        .into_iter()
        .enumerate()
        .map(|(i, (q, r))| Prompt {
            prompt_id: format!("p{i}"),
            messages: vec![Message::new(Role::User, q)],
            reference: Some(r.to_string()),
            split: Split::Train,
            origin: "test".into(),
        })
        .collect()
}

#[path = "../../../common/testutil/run.rs"]
mod run;
pub use run::{failed, ok};
