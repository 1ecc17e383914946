//! `get_thing_shadow()` in rules: the engine's [`ShadowReader`] over the shadow store.
//! It reads what is committed when the batch is evaluated (every shadow the batch names
//! in one read), so a rule never sees a document older than an `/accepted` already sent.

use std::sync::Arc;

use weir_engine::ShadowReader;

use super::service::now_s;
use super::store::ShadowBackend;
use super::topic::ShadowId;

pub struct Reader(pub(super) Arc<dyn ShadowBackend>);

impl ShadowReader for Reader {
    fn read(&self, wanted: &[(&str, Option<&str>)]) -> Result<Vec<Option<String>>, String> {
        // A name no shadow can have names none: Undefined, as AWS's missing shadow.
        let ids: Vec<Option<ShadowId>> = wanted
            .iter()
            .map(|(thing, name)| ShadowId::new(thing, *name).ok())
            .collect();
        let valid: Vec<ShadowId> = ids.iter().flatten().cloned().collect();
        let found = self.0.load_now(&valid).map_err(|e| format!("{e:#}"))?;
        let now = now_s();
        Ok(ids
            .iter()
            .map(|id| {
                let record = found.get(id.as_ref()?)?;
                record
                    .live()
                    .then(|| record.get_document(now, None).to_string())
            })
            .collect())
    }
}
