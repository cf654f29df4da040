//! The protobuf JSON mapping of the t2v.v1 messages (lowerCamelCase names, enums as names,
//! 64-bit integers as strings), through the descriptors: the form `submit --batch` reads,
//! `watch` prints, and schemas/*.schema.json describe.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("not a valid {schema} in JSON form: {source}")]
    Parse {
        schema: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The JSON form did not re-encode into the prost type (a descriptor out of step with it).
    #[error("not a valid {schema} in JSON form: {source}")]
    Decode {
        schema: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

fn descriptor(full_name: &str) -> prost_reflect::MessageDescriptor {
    t2v_proto::descriptor_pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the compiled descriptor set"))
}

/// Serialises a message to its canonical JSON form (one line).
pub fn to_json<M: Message>(schema: &str, message: &M) -> String {
    let dynamic = DynamicMessage::decode(descriptor(schema), message.encode_to_vec().as_slice())
        .expect("a prost message re-decodes with its own descriptor");
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    dynamic
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .expect("serialising to a Vec cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Parses the JSON form of `schema` into the prost type `M`. Unknown fields are an error.
pub fn from_json<M: Message + Default>(schema: &'static str, json: &str) -> Result<M, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor(schema),
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|dynamic| deserializer.end().map(|()| dynamic))
    .map_err(|source| JsonError::Parse { schema, source })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|source| JsonError::Decode { schema, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use t2v_contract::headers::schema::GENERATION_REQUEST;
    use t2v_proto::v1::GenerationRequest;

    #[test]
    fn request_round_trips_through_json() {
        let req = GenerationRequest {
            job_id: "j1".into(),
            model: "m".into(),
            prompt: "a fox".into(),
            num_frames: 81,
            seed: Some(42),
            guidance_scale: Some(4.0),
            sampler: 1,
            ..Default::default()
        };
        let json = to_json(GENERATION_REQUEST, &req);
        assert!(json.contains("\"numFrames\":81"), "{json}");
        assert!(json.contains("\"sampler\":\"SAMPLER_UNIPC\""), "{json}");
        assert!(json.contains("\"seed\":\"42\""), "{json}");
        let back: GenerationRequest = from_json(GENERATION_REQUEST, &json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            from_json::<GenerationRequest>(GENERATION_REQUEST, r#"{"prompt":"x","frames":3}"#)
                .unwrap_err();
        assert!(err.to_string().contains("frames"), "{err}");
    }
}
