//! The JSON Schemas in schemas/ for the JSON form of requests and events are generated from the
//! proto descriptors (proto3 JSON mapping), so they cannot drift: this test regenerates them and
//! fails when the committed files differ. `make schemas` (T2V_WRITE_SCHEMAS=1) rewrites them.

use std::collections::BTreeMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

const SCHEMAS: &[(&str, &str)] = &[
    ("t2v.v1.GenerationRequest", "generation_request.schema.json"),
    ("t2v.v1.GenerationEvent", "generation_event.schema.json"),
    ("t2v.v1.ControlCommand", "control_command.schema.json"),
];

/// The leading comment of the element at `path` in its file, as one paragraph.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}

fn scalar_schema(kind: &Kind, defs: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": ["string", "integer"], "pattern": "^-?[0-9]+$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": ["string", "integer"], "pattern": "^[0-9]+$", "minimum": 0})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            let names: Vec<Value> = e.values().map(|v| json!(v.name())).collect();
            let numbers: Vec<Value> = e.values().map(|v| json!(v.number())).collect();
            let mut schema = json!({"enum": names.into_iter().chain(numbers).collect::<Vec<_>>()});
            if let Some(text) = comment(&e.parent_file(), e.path()) {
                schema["description"] = json!(text);
            }
            schema
        }
        Kind::Message(m) => {
            if !defs.contains_key(m.full_name()) {
                defs.insert(m.full_name().to_string(), Value::Null);
                let schema = message_schema(m, defs);
                defs.insert(m.full_name().to_string(), schema);
            }
            json!({"$ref": format!("#/$defs/{}", m.full_name())})
        }
    }
}

fn field_schema(field: &FieldDescriptor, defs: &mut BTreeMap<String, Value>) -> Value {
    let mut schema = if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are entry messages")
        };
        let value = entry.map_entry_value_field();
        json!({"type": "object", "additionalProperties": scalar_schema(&value.kind(), defs)})
    } else if field.cardinality() == Cardinality::Repeated {
        json!({"type": "array", "items": scalar_schema(&field.kind(), defs)})
    } else {
        scalar_schema(&field.kind(), defs)
    };
    if let Some(text) = comment(&field.parent_file(), field.path()) {
        schema["description"] = json!(text);
    }
    schema
}

fn message_schema(message: &MessageDescriptor, defs: &mut BTreeMap<String, Value>) -> Value {
    let mut properties = Map::new();
    for field in message.fields() {
        properties.insert(field.json_name().to_string(), field_schema(&field, defs));
    }
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    // A oneof admits at most one of its members.
    let exclusive: Vec<Value> = message
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .map(|o| {
            let names: Vec<Value> = o
                .fields()
                .map(|f| json!({"required": [f.json_name()]}))
                .collect();
            json!({"not": {"anyOf": pairs(&names)}})
        })
        .collect();
    if !exclusive.is_empty() {
        schema["allOf"] = json!(exclusive);
    }
    if let Some(text) = comment(&message.parent_file(), message.path()) {
        schema["description"] = json!(text);
    }
    schema
}

/// `{"allOf": [a, b]}` for every pair of members: any two present at once is invalid.
fn pairs(members: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            out.push(json!({"allOf": [a, b]}));
        }
    }
    out
}

fn generate(full_name: &str) -> String {
    let message = t2v_proto::descriptor_pool()
        .get_message_by_name(full_name)
        .unwrap();
    let mut defs = BTreeMap::new();
    let mut root = message_schema(&message, &mut defs);
    let root_obj = root.as_object_mut().unwrap();
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema.insert(
        "$id".into(),
        json!(format!("https://t2v-fleet.dev/schemas/{full_name}.json")),
    );
    schema.insert("title".into(), json!(full_name));
    schema.insert(
        "$comment".into(),
        json!("Generated from proto/t2v/v1 by `make schemas`; the protobuf JSON mapping (lowerCamelCase names, enums by name, 64-bit integers as strings). Do not edit."),
    );
    schema.append(root_obj);
    if !defs.is_empty() {
        schema.insert("$defs".into(), json!(defs));
    }
    serde_json::to_string_pretty(&Value::Object(schema)).unwrap() + "\n"
}

#[test]
fn committed_json_schemas_match_the_protos() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let write = std::env::var_os("T2V_WRITE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (message, file) in SCHEMAS {
        let path = dir.join(file);
        let generated = generate(message);
        if write {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "JSON Schemas out of date with the protos: {stale:?} — run `make schemas` and commit"
    );
}

#[test]
fn request_schema_describes_fields_with_their_bounds() {
    let schema: Value = serde_json::from_str(&generate("t2v.v1.GenerationRequest")).unwrap();
    let frames = &schema["properties"]["numFrames"];
    assert_eq!(frames["type"], "integer");
    assert!(frames["description"]
        .as_str()
        .unwrap()
        .contains("num_frames % 4 == 1"));
    assert_eq!(schema["properties"]["seed"]["pattern"], "^[0-9]+$");
    assert_eq!(schema["additionalProperties"], false);
    let event: Value = serde_json::from_str(&generate("t2v.v1.GenerationEvent")).unwrap();
    assert!(
        event["$defs"]["t2v.v1.Completed"]["properties"]["video"]["$ref"]
            == "#/$defs/t2v.v1.Artifact"
    );
}
