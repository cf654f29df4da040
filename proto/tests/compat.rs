//! Wire and JSON compatibility of t2v.v1 against the committed baseline
//! (proto/baseline/t2v_v1.binpb), the checks `buf breaking` makes for FILE/WIRE_JSON:
//! no message, field or enum value removed (unless its number is reserved), none renumbered,
//! renamed, retyped or moved in or out of `repeated`.
//! After an intended, compatible addition: `T2V_WRITE_BASELINE=1 cargo test -p t2v-proto --test compat`.

use prost::Message;
use prost_reflect::{Cardinality, DescriptorPool, Kind};

const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/baseline/t2v_v1.binpb");

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}"),
    }
}

/// Every way `current` breaks readers or writers of `baseline`.
fn breaking_changes(baseline: &DescriptorPool, current: &DescriptorPool) -> Vec<String> {
    let mut problems = Vec::new();
    for old in baseline.all_messages() {
        let Some(new) = current.get_message_by_name(old.full_name()) else {
            problems.push(format!("message {} was removed", old.full_name()));
            continue;
        };
        let reserved = |n: u32| new.reserved_ranges().any(|r| r.contains(&n));
        for old_field in old.fields() {
            let here = format!("{}.{}", old.full_name(), old_field.name());
            match new.get_field(old_field.number()) {
                None if reserved(old_field.number()) => {}
                None => match new.get_field_by_name(old_field.name()) {
                    Some(moved) => problems.push(format!(
                        "field {here} was renumbered from {} to {}",
                        old_field.number(),
                        moved.number()
                    )),
                    None => problems.push(format!(
                        "field {here} (number {}) was removed without reserving its number",
                        old_field.number()
                    )),
                },
                Some(new_field) => {
                    if new_field.name() != old_field.name() {
                        problems.push(format!(
                            "field number {} of {} was renamed from {} to {} (breaks the JSON form)",
                            old_field.number(),
                            old.full_name(),
                            old_field.name(),
                            new_field.name()
                        ));
                    }
                    if kind_name(&new_field.kind()) != kind_name(&old_field.kind()) {
                        problems.push(format!(
                            "field {here} changed type from {} to {}",
                            kind_name(&old_field.kind()),
                            kind_name(&new_field.kind())
                        ));
                    }
                    let repeated = |c: Cardinality| c == Cardinality::Repeated;
                    if repeated(new_field.cardinality()) != repeated(old_field.cardinality()) {
                        problems.push(format!(
                            "field {here} changed between singular and repeated"
                        ));
                    }
                    if new_field.containing_oneof().map(|o| o.name().to_string())
                        != old_field.containing_oneof().map(|o| o.name().to_string())
                    {
                        problems.push(format!("field {here} moved in or out of a oneof"));
                    }
                }
            }
        }
    }
    for old in baseline.all_enums() {
        let Some(new) = current.get_enum_by_name(old.full_name()) else {
            problems.push(format!("enum {} was removed", old.full_name()));
            continue;
        };
        for value in old.values() {
            match new.get_value(value.number()) {
                Some(v) if v.name() == value.name() => {}
                Some(v) => problems.push(format!(
                    "enum value {} = {} was renamed to {}",
                    value.name(),
                    value.number(),
                    v.name()
                )),
                None if new.reserved_ranges().any(|r| r.contains(&value.number())) => {}
                None => problems.push(format!(
                    "enum value {} = {} of {} was removed",
                    value.name(),
                    value.number(),
                    old.full_name()
                )),
            }
        }
    }
    problems
}

fn current_set() -> prost_types::FileDescriptorSet {
    prost_types::FileDescriptorSet::decode(t2v_proto::FILE_DESCRIPTOR_SET).unwrap()
}

fn pool(set: prost_types::FileDescriptorSet) -> DescriptorPool {
    DescriptorPool::from_file_descriptor_set(set).unwrap()
}

fn baseline() -> DescriptorPool {
    let bytes = std::fs::read(BASELINE)
        .unwrap_or_else(|e| panic!("{BASELINE}: {e} — write it with T2V_WRITE_BASELINE=1"));
    DescriptorPool::decode(bytes.as_slice()).unwrap()
}

/// Applies `change` to field `field` of message `message` in a copy of the current descriptors.
fn mutated(
    message: &str,
    field: &str,
    change: impl Fn(&mut prost_types::FieldDescriptorProto),
) -> DescriptorPool {
    let mut set = current_set();
    let target = set
        .file
        .iter_mut()
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == message)
        .and_then(|m| m.field.iter_mut().find(|f| f.name() == field))
        .expect("field exists");
    change(target);
    pool(set)
}

#[test]
fn current_protos_are_compatible_with_the_baseline() {
    if std::env::var_os("T2V_WRITE_BASELINE").is_some() {
        let mut set = current_set();
        for file in &mut set.file {
            file.source_code_info = None;
        }
        std::fs::write(BASELINE, set.encode_to_vec()).unwrap();
    }
    let problems = breaking_changes(&baseline(), t2v_proto::descriptor_pool());
    assert!(
        problems.is_empty(),
        "breaking proto changes:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn renumbering_a_field_is_caught() {
    let broken = mutated("GenerationRequest", "num_frames", |f| f.number = Some(99));
    let problems = breaking_changes(&baseline(), &broken);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("t2v.v1.GenerationRequest.num_frames was renumbered from 7 to 99")),
        "{problems:?}"
    );
}

#[test]
fn removing_renaming_or_retyping_a_field_is_caught() {
    let renamed = mutated("Completed", "seed", |f| f.name = Some("random_seed".into()));
    assert!(breaking_changes(&baseline(), &renamed)
        .iter()
        .any(|p| p.contains("renamed from seed to random_seed")));

    let retyped = mutated("Progress", "step", |f| {
        f.set_type(prost_types::field_descriptor_proto::Type::String)
    });
    assert!(breaking_changes(&baseline(), &retyped)
        .iter()
        .any(|p| p.contains("Progress.step changed type")));

    let mut set = current_set();
    let msg = set
        .file
        .iter_mut()
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "Artifact")
        .unwrap();
    msg.field.retain(|f| f.name() != "sha256");
    let problems = breaking_changes(&baseline(), &pool(set));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Artifact.sha256 (number 3) was removed")),
        "{problems:?}"
    );
}

#[test]
fn adding_a_field_is_compatible() {
    let mut set = current_set();
    let msg = set
        .file
        .iter_mut()
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "Cancel")
        .unwrap();
    let mut extra = msg.field[0].clone();
    extra.name = Some("requested_by".into());
    extra.json_name = Some("requestedBy".into());
    extra.number = Some(2);
    msg.field.push(extra);
    assert_eq!(
        breaking_changes(&baseline(), &pool(set)),
        Vec::<String>::new()
    );
}
