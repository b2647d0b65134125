//! `--config run.toml`: a TOML file of a command's long options (`micro-batch = 8`, `bf16 = true`,
//! names with `-` or `_`), spliced into the command line ahead of the flags given there, so that
//! those flags override the file. [`resolved`] writes every option's final value back as such a
//! file, which a run saves so that `--config` on it repeats the run.
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// The option that names the file.
const CONFIG: &str = "config";

/// `args` with the options of the subcommand's `--config` file inserted right after the
/// subcommand's name; `args` unchanged when the subcommand has no `--config` or none is given.
pub fn splice(args: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>> {
    let Some(sub) = args.get(1).and_then(|a| a.to_str()).and_then(|name| cli.find_subcommand(name)) else {
        return Ok(args);
    };
    if !sub.get_arguments().any(|a| a.get_id() == CONFIG) {
        return Ok(args);
    }
    let mut path = None;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            path = Some(rest.next().ok_or_else(|| anyhow!("--config needs a file"))?.clone());
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(OsString::from(p));
        }
    }
    let Some(path) = path else { return Ok(args) };
    let flags = file_flags(Path::new(&path), sub)?;
    let mut out = args[..2].to_vec();
    out.extend(flags);
    out.extend_from_slice(&args[2..]);
    Ok(out)
}

/// The command-line flags a config file stands for.
fn file_flags(path: &Path, sub: &Command) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow!("{}: not valid TOML: {}", path.display(), e.to_string().trim_end())
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != CONFIG)
            .ok_or_else(|| {
                anyhow!(
                    "{}: unknown option '{key}' ({} has no --{name}; `uniattn {} --help` lists them)",
                    path.display(),
                    sub.get_name(),
                    sub.get_name()
                )
            })?;
        let takes_value = arg.get_action().takes_values();
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<Vec<_>>>(),
            v => scalar(v).map(|s| vec![s]),
        }
        .ok_or_else(|| {
            anyhow!(
                "{}: '{key}' must be a string, number or boolean (or a list of them), got {value}",
                path.display()
            )
        })?;
        match (takes_value, value) {
            (false, toml::Value::Boolean(true)) => flags.push(OsString::from(format!("--{name}"))),
            (false, toml::Value::Boolean(false)) => {}
            (false, _) => bail!("{}: '{key}' is a switch: give true or false, got {value}", path.display()),
            (true, _) => {
                for v in values {
                    flags.push(OsString::from(format!("--{name}")));
                    flags.push(OsString::from(v));
                }
            }
        }
    }
    Ok(flags)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every option of `sub` with the value it ended with (given, from the file, or the default), as
/// a config file; options without a value are left out.
pub fn resolved(sub: &Command, matches: &ArgMatches) -> String {
    let mut table = toml::Table::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "help" | "version" | CONFIG) {
            continue;
        }
        let Some(raw) = matches.get_raw(id) else { continue };
        let values: Vec<toml::Value> = raw.map(|v| typed(&v.to_string_lossy())).collect();
        let value = match <[toml::Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => toml::Value::Array(many),
        };
        table.insert(long.to_string(), value);
    }
    toml::to_string(&table).expect("a table of scalars serialises")
}

/// A value as TOML types it: a number or boolean where the text is one, a string otherwise.
fn typed(s: &str) -> toml::Value {
    if let Ok(i) = s.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = s.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Some(f) = s.parse::<f64>().ok().filter(|f| f.is_finite()) {
        toml::Value::Float(f)
    } else {
        toml::Value::String(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::{CommandFactory, FromArgMatches};

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn write(dir: &Path, text: &str) -> String {
        let p = dir.join("run.toml");
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// File values apply, flags on the command line win, switches and lists work, and the
    /// resolved configuration read back as a file gives the same arguments.
    #[test]
    fn file_then_flags_and_the_resolved_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "model = \"smollm2\"\ndata = \"d.json\"\nout = \"runs/a\"\nmicro_batch = 8\nlr = 3e-5\nbf16 = true\npack = false\n",
        );
        let cli = Cli::command();
        let spliced = splice(args(&["uniattn", "train", "--config", &cfg, "--lr", "1e-4"]), &cli).unwrap();
        let matches = cli.clone().get_matches_from(spliced);
        let sub = matches.subcommand_matches("train").unwrap();
        assert_eq!(sub.get_one::<usize>("micro_batch"), Some(&8), "from the file");
        assert_eq!(sub.get_one::<f64>("lr"), Some(&1e-4), "the flag overrides the file");
        assert_eq!(sub.get_one::<bool>("bf16"), Some(&true));
        assert_eq!(sub.get_one::<bool>("pack"), Some(&false));
        let train = cli.find_subcommand("train").unwrap();
        let text = resolved(train, sub);
        assert!(
            text.contains("micro-batch = 8") && text.contains("lr = 0.0001") && text.contains("seed = 42"),
            "{text}"
        );
        let again = write(dir.path(), &text);
        let m2 = cli
            .clone()
            .get_matches_from(splice(args(&["uniattn", "train", "--config", &again]), &cli).unwrap());
        assert_eq!(resolved(train, m2.subcommand_matches("train").unwrap()), text);
        assert!(crate::Cli::from_arg_matches(&m2).is_ok());
    }

    /// Unknown keys, wrong types and broken TOML name the file and the key.
    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::command();
        for (text, want) in [
            ("micro_bach = 8\n", "unknown option 'micro_bach'"),
            ("bf16 = 3\n", "'bf16' is a switch"),
            ("lr = { a = 1 }\n", "'lr' must be a string, number or boolean"),
            ("lr = \n", "not valid TOML"),
        ] {
            let cfg = write(dir.path(), text);
            let err = splice(args(&["uniattn", "train", "--config", &cfg]), &cli).unwrap_err().to_string();
            assert!(err.contains(&cfg) && err.contains(want), "{text:?}: {err}");
        }
        let missing = dir.path().join("none.toml");
        let err =
            splice(args(&["uniattn", "train", "--config", &missing.to_string_lossy()]), &cli).unwrap_err();
        assert!(format!("{err:#}").contains("none.toml"), "{err:#}");
        // Commands without --config are left alone.
        let plain = args(&["uniattn", "info", "--config", "x"]);
        assert_eq!(splice(plain.clone(), &cli).unwrap(), plain);
    }

    /// The committed config files (configs/train/) are accepted by `train`.
    #[test]
    fn the_committed_configs_parse() {
        let cli = Cli::command();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path().to_string_lossy().into_owned();
            let spliced = splice(
                args(&["uniattn", "train", "--config", &path, "--model", "m", "--data", "d", "--out", "o"]),
                &cli,
            )
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
            cli.clone().try_get_matches_from(spliced).unwrap_or_else(|e| panic!("{path}: {e}"));
            seen += 1;
        }
        assert!(seen >= 3, "configs/train holds the experiment profiles");
    }
}
