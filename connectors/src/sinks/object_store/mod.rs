//! The object-storage action: outputs as JSON lines or Parquet files, on the local disk
//! (`file://`, or the output directory when no URL is given) or in S3 and S3-compatible
//! stores, Google Cloud Storage and Azure, through the `object_store` crate.
//!
//! * [`config`]: the action as a rule writes it, checked once; [`store`]: where the files
//!   go, and the options each store takes.
//! * [`sink`]: the running sink, which stages outputs and rolls files.
//! * [`staging`]: outputs are appended to a staging file per partition (the rendered path
//!   template) and are durable once the batch is flushed.
//! * [`upload`]: rolled files are converted and uploaded in the background; failed
//!   uploads wait on disk, files a crashed or stopped run left are uploaded at the next
//!   start.
//! * [`format`]: JSON lines, or Parquet converted from them.

mod config;
mod format;
mod sink;
mod staging;
mod store;
#[cfg(test)]
mod tests;
mod upload;

pub use config::{ObjectStoreConfig, ObjectStoreConnection};
pub use format::{Format, to_parquet};
pub use sink::{ObjectStoreSink, Settings};
