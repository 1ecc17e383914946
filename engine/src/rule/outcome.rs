//! What running a rule over a batch gives: per message, its outputs or why it failed.

use bytes::Bytes;

/// One output message of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Index of the input message in the slice given to [`Rule::process`](super::Rule::process).
    pub index: usize,
    /// The output JSON object.
    pub payload: Bytes,
    /// The values of the rule's template expressions for this message (`None`: undefined).
    pub params: Vec<Option<String>>,
}

/// Why a message produced no output although the rule's topic filter matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The payload is not valid JSON.
    InvalidJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A field has a type the rule cannot use (a string where it reads into an object, ...).
    TypeMismatch,
    /// An expression failed on this message's values.
    Evaluation,
    /// The evaluation failed inside weir (a panic, caught): a bug to report.
    Internal,
    /// The rule took longer than its time budget to evaluate the batch.
    Timeout,
    /// The rule needed more memory than its budget to evaluate this message.
    MemoryBudget,
}

impl FailureReason {
    /// A short stable name, used as a metrics label and in error-action messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::TypeMismatch => "type_mismatch",
            Self::Evaluation => "evaluation_error",
            Self::Internal => "internal_error",
            Self::Timeout => "timeout",
            Self::MemoryBudget => "memory_budget",
        }
    }

    pub const ALL: [FailureReason; 7] = [
        Self::InvalidJson,
        Self::NotAnObject,
        Self::TypeMismatch,
        Self::Evaluation,
        Self::Internal,
        Self::Timeout,
        Self::MemoryBudget,
    ];
}

/// A message that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub index: usize,
    pub reason: FailureReason,
    pub message: String,
}

/// What a batch produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub outputs: Vec<Output>,
    pub failures: Vec<Failure>,
    /// Messages for which WHERE was false (or undefined).
    pub filtered_out: usize,
}

impl Outcome {
    /// About how many bytes the outcome holds.
    pub fn bytes(&self) -> usize {
        let outputs = self.outputs.iter().map(|o| {
            o.payload.len() + o.params.iter().flatten().map(String::len).sum::<usize>() + 64
        });
        let failures = self.failures.iter().map(|f| f.message.len() + 32);
        outputs.chain(failures).fold(0, usize::saturating_add)
    }
}
