//! The general decoding path: projection, batch types, mixed arrays, undefined paths.

use super::*;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, Int64Type};

fn tree(paths: &[&str]) -> FieldTree {
    let mut t = FieldTree::default();
    for p in paths {
        let parts: Vec<String> = p.split('.').map(str::to_owned).collect();
        t.add(&parts);
    }
    t
}

#[test]
fn projects_only_read_fields() {
    let t = tree(&["a", "g.lat"]);
    let m = project(
        br#"{"a": 1, "b": {"big": [1,2,3]}, "g": {"lat": 5, "lon": 6}}"#,
        &t,
    )
    .unwrap();
    assert_eq!(
        Value::Object(m),
        serde_json::json!({"a": 1, "g": {"lat": 5}})
    );
}

#[test]
fn refuses_bad_payloads() {
    let t = tree(&["a"]);
    assert!(matches!(
        project(b"{\"a\": ", &t),
        Err(DecodeError::InvalidJson(_))
    ));
    assert!(matches!(
        project(b"not json", &t),
        Err(DecodeError::InvalidJson(_))
    ));
    assert!(matches!(
        project(b"{\"a\": 1} x", &t),
        Err(DecodeError::InvalidJson(_))
    ));
    assert_eq!(project(b"[1,2]", &t), Err(DecodeError::NotAnObject));
    assert_eq!(project(b"42", &t), Err(DecodeError::NotAnObject));
    // Fields a rule does not read are still validated.
    assert!(matches!(
        project(b"{\"b\": [1,}", &t),
        Err(DecodeError::InvalidJson(_))
    ));
}

#[test]
fn batch_types_follow_the_data_and_missing_fields_are_null() {
    let t = tree(&["i", "f", "s", "missing", "g.lat"]);
    let rows = vec![
        serde_json::json!({"i": 1, "f": 1, "s": "x", "g": {"lat": 1.5}}),
        serde_json::json!({"i": 2, "f": 2.5, "s": null}),
    ];
    let rows: Vec<Row> = rows.into_iter().enumerate().collect();
    let b = rows_to_batch(&rows, &t).unwrap();
    let s = b.schema();
    assert_eq!(
        s.field_with_name("i").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(
        s.field_with_name("f").unwrap().data_type(),
        &DataType::Float64
    );
    assert_eq!(s.field_with_name("s").unwrap().data_type(), &DataType::Utf8);
    assert_eq!(
        s.field_with_name("missing").unwrap().data_type(),
        &DataType::Null
    );
    assert!(matches!(
        s.field_with_name("g").unwrap().data_type(),
        DataType::Struct(_)
    ));
    let i = b.column_by_name("i").unwrap().as_primitive::<Int64Type>();
    assert_eq!(i.values(), &[1, 2]);
    let f = b.column_by_name("f").unwrap().as_primitive::<Float64Type>();
    assert_eq!(f.values(), &[1.0, 2.5]);
    assert_eq!(
        b.column_by_name("s").unwrap().as_string::<i32>().value(0),
        "x"
    );
}

#[test]
fn mixed_number_and_string_refuses_the_batch() {
    let rows = vec![
        (0, serde_json::json!({"s": "x"})),
        (1, serde_json::json!({"s": 3})),
    ];
    let err = rows_to_batch(&rows, &tree(&["s"])).unwrap_err();
    assert!(err.to_string().contains("mixed types"), "{err}");
}

#[test]
fn mixed_arrays_become_json_text() {
    let rows = vec![
        (
            0,
            serde_json::json!({"m": [1, "a"], "g": {"n": [{"x": 1}, 2]}, "ok": [1, 2]}),
        ),
        (
            1,
            serde_json::json!({"m": [3], "g": {"n": null}, "ok": [3]}),
        ),
    ];
    let b = rows_to_batch(&rows, &tree(&["m", "g", "ok"])).unwrap();
    let m = b.schema().field_with_name("m").unwrap().clone();
    assert_eq!(m.data_type(), &DataType::Utf8);
    assert!(m.metadata().contains_key(crate::json_text::JSON_TEXT));
    let texts = b.column_by_name("m").unwrap().as_string::<i32>();
    assert_eq!(texts.value(0), r#"[1,"a"]"#);
    assert_eq!(texts.value(1), "[3]");
    let DataType::Struct(g) = b.schema().field_with_name("g").unwrap().data_type().clone() else {
        panic!("g is a struct")
    };
    assert_eq!(g[0].data_type(), &DataType::Utf8);
    assert!(matches!(
        b.schema().field_with_name("ok").unwrap().data_type(),
        DataType::List(_)
    ));
}

#[test]
fn undefined_paths_name_what_is_missing_or_null() {
    let t = tree(&["a", "g.lat", "g.lon", "h.x", "n"]);
    let v = serde_json::json!({"a": 1, "g": {"lat": 2}, "n": null});
    assert_eq!(undefined_paths(&t, &v), ["g.lon", "h", "n"]);
}

#[test]
fn reference_schema_has_every_path() {
    let s = reference_schema(&tree(&["a", "g.lat", "g.lon"]));
    assert_eq!(s.field_with_name("a").unwrap().data_type(), &DataType::Null);
    let DataType::Struct(g) = s.field_with_name("g").unwrap().data_type() else {
        panic!("g is a struct")
    };
    assert_eq!(g.len(), 2);
}
