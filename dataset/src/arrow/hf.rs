//! HuggingFace `save_to_disk` folders: a `Dataset` (`state.json` naming its `.arrow` shards)
//! or a one-split `DatasetDict`, as stream shards.

use elf_store::Location;

use super::ArrowStream;
use crate::DataError;

/// Opens a `save_to_disk` folder (a `Dataset` or a one-split `DatasetDict`) or a single
/// `.arrow` stream file.
///
/// # Errors
/// Missing or malformed `state.json`, a DatasetDict with several splits, or any shard error.
pub fn open_hf(loc: &Location) -> Result<Vec<ArrowStream>, DataError> {
    if !loc.is_dir()? {
        return Ok(vec![ArrowStream::open(loc.open()?)?]);
    }
    let names = loc.list()?;
    if names.iter().any(|n| n == "dataset_dict.json") {
        let dict: serde_json::Value =
            serde_json::from_slice(&loc.join("dataset_dict.json").read_all()?).map_err(|e| {
                DataError::parse(
                    format!("{}/dataset_dict.json", loc.display()),
                    "malformed JSON",
                    e,
                )
            })?;
        let splits: Vec<String> = dict["splits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if splits.len() != 1 {
            return Err(DataError::Format {
                name: loc.display(),
                message: format!(
                    "DatasetDict with splits {splits:?}; point data_path at one split folder"
                ),
            });
        }
        return open_hf(&loc.join(&splits[0]));
    }
    let state_loc = loc.join("state.json");
    let files: Vec<String> = if names.iter().any(|n| n == "state.json") {
        let state: serde_json::Value = serde_json::from_slice(&state_loc.read_all()?)
            .map_err(|e| DataError::parse(state_loc.display(), "malformed JSON", e))?;
        state["_data_files"]
            .as_array()
            .ok_or_else(|| DataError::Format {
                name: state_loc.display(),
                message: "no _data_files list".into(),
            })?
            .iter()
            .map(|f| {
                f["filename"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| DataError::Format {
                        name: state_loc.display(),
                        message: "a _data_files entry has no filename".into(),
                    })
            })
            .collect::<Result<_, _>>()?
    } else {
        names
            .into_iter()
            .filter(|n| n.ends_with(".arrow"))
            .collect()
    };
    if files.is_empty() {
        return Err(DataError::Format {
            name: loc.display(),
            message: "no .arrow shards found".into(),
        });
    }
    files
        .iter()
        .map(|f| ArrowStream::open(loc.join(f).open()?))
        .collect()
}
