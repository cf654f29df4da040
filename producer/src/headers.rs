//! t2v-contract's record headers as rdkafka headers (one home: t2v-kafka).

pub use t2v_kafka::record_headers;
