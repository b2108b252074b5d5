//! The task front ends' prompts: one wording per task, shared by zero-shot generation
//! (`decodex summarize`, `decodex answer`) and by fine-tuning data (`decodex finetune --task`),
//! so a fine-tuned model is compared with the zero-shot one on exactly the same prompt.

/// The user message asking for a summary of `document` (a DialogSum dialogue, say).
pub fn summarize_prompt(document: &str) -> String {
    format!(
        "Summarize the following dialogue in one or two sentences.\n\n{}",
        document.trim()
    )
}

/// The user message asking for an extractive answer to `question` from `context`.
pub fn answer_prompt(context: &str, question: &str) -> String {
    format!(
        "Answer the question with a short phrase copied from the context.\n\nContext: {}\n\nQuestion: {}",
        context.trim(),
        question.trim()
    )
}
