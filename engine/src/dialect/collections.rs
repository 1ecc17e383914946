//! AWS IoT SQL collection functions that need their own kernel.
//!
//! * `transform('enrichArray', object, array)`: every object of `array` gets the members
//!   of `object` added (the object's win on a clash). Vectorised: the object's columns are
//!   repeated per element with one `take` each, the list offsets are reused as they are.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, StructArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

pub(super) const ENRICH: &str = "__weir_enrich_array";

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct EnrichArray {
    signature: Signature,
}

impl EnrichArray {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// The element fields of the result: the array's, then the object's (replacing clashes).
fn merged(element: &Fields, object: &Fields) -> Fields {
    let mut out: Vec<Arc<Field>> = element
        .iter()
        .filter(|f| object.find(f.name()).is_none())
        .cloned()
        .collect();
    out.extend(object.iter().cloned());
    Fields::from(out)
}

fn shapes(arg_types: &[DataType]) -> Result<(Fields, Fields)> {
    match arg_types {
        [DataType::Struct(object), DataType::List(item)] => match item.data_type() {
            DataType::Struct(element) => Ok((object.clone(), element.clone())),
            DataType::Null => Ok((object.clone(), Fields::empty())),
            other => {
                plan_err!("transform('enrichArray', ...): the array must hold objects, got {other}")
            }
        },
        [DataType::Null, _] | [_, DataType::Null] => Ok((Fields::empty(), Fields::empty())),
        [o, a] => plan_err!(
            "transform('enrichArray', object, array) needs an object and an array of objects, got {o} and {a}"
        ),
        _ => plan_err!("transform() takes 3 arguments"),
    }
}

impl ScalarUDFImpl for EnrichArray {
    fn name(&self) -> &str {
        ENRICH
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let (object, element) = shapes(arg_types)?;
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(merged(&element, &object)),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let [object, array] = args.args.as_slice() else {
            return exec_err!("transform() takes 3 arguments");
        };
        let (object, array) = (object.to_array(n)?, array.to_array(n)?);
        if matches!(object.data_type(), DataType::Null)
            || matches!(array.data_type(), DataType::Null)
        {
            return Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_null_array(args.return_field.data_type(), n),
            ));
        }
        let object = object.as_struct();
        let list = array.as_list::<i32>();
        let elements = list.values().as_struct_opt();
        // For every element, the row it belongs to.
        let offsets = list.value_offsets();
        let mut rows = Vec::with_capacity(list.values().len());
        for row in 0..list.len() {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            rows.extend(std::iter::repeat_n(row as u32, end - start));
        }
        let rows = UInt32Array::from(rows);
        let DataType::List(item) = args.return_field.data_type() else {
            return exec_err!("transform(): unexpected return type");
        };
        let DataType::Struct(fields) = item.data_type() else {
            return exec_err!("transform(): unexpected element type");
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let column = match object.column_by_name(f.name()) {
                Some(c) => take(c.as_ref(), &rows, None)?,
                None => match elements.and_then(|e| e.column_by_name(f.name())) {
                    Some(c) => c.clone(),
                    None => datafusion::arrow::array::new_null_array(f.data_type(), rows.len()),
                },
            };
            columns.push(column);
        }
        let values = StructArray::try_new(
            fields.clone(),
            columns,
            elements.and_then(|e| e.nulls().cloned()),
        )?;
        let out = ListArray::try_new(
            item.clone(),
            list.offsets().clone(),
            Arc::new(values),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
