//! The shared planning context every rule is compiled and planned with: DataFusion's
//! session state with weir's settings (one partition, case-sensitive identifiers) and
//! weir's functions, each of DataFusion's metered (see [`crate::dialect::functions`]).

use std::sync::Arc;

use crate::dialect;

/// The shared planning context: DataFusion's session state with weir's settings and
/// functions. Create one per process and share it between rules.
#[derive(Debug)]
pub struct Engine {
    state: datafusion::execution::SessionState,
}

impl Engine {
    pub fn new() -> Arc<Self> {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::prelude::SessionConfig;
        let mut config = SessionConfig::new().with_target_partitions(1);
        // AWS IoT SQL is case sensitive: `currentAmbientTemperature` must not be lowered.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        for udf in dialect::functions::udfs() {
            use datafusion::execution::FunctionRegistry;
            state
                .register_udf(Arc::new(udf))
                .expect("weir's functions register once, without conflict");
        }
        dialect::functions::bounded::install(&mut state);
        Arc::new(Self { state })
    }

    pub(crate) fn state(&self) -> &datafusion::execution::SessionState {
        &self.state
    }
}
