//! The formats of the files an object-store action writes: JSON lines, as staged, or
//! Parquet, converted from them when a file is rolled.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::delivery::{Failure, Reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

impl Format {
    pub(super) fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// JSON lines to a Parquet file: the schema is inferred from all the rows. Public for the
/// encoding benchmark.
pub fn to_parquet(lines: &[u8]) -> Result<bytes::Bytes, Failure> {
    use weir_engine::arrow::json::ReaderBuilder;
    use weir_engine::arrow::json::reader::infer_json_schema_from_seekable;
    let fail = |m: String| Failure::new(Reason::Parquet, m);
    let (schema, _) = infer_json_schema_from_seekable(std::io::Cursor::new(lines), None)
        .map_err(|e| fail(format!("inferring the schema: {e}")))?;
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone())
        .with_batch_size(64 * 1024)
        .with_coerce_primitive(true)
        .build(std::io::Cursor::new(lines))
        .map_err(|e| fail(format!("reading rows: {e}")))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| fail(format!("starting the file: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("reading rows: {e}")))?;
        writer
            .write(&batch)
            .map_err(|e| fail(format!("writing rows: {e}")))?;
    }
    writer
        .close()
        .map_err(|e| fail(format!("finishing the file: {e}")))?;
    Ok(bytes::Bytes::from(out))
}
