//! The closed sets of values flags take, as clap value enums and parsers:
//! `--help` and the shell completions list them, and a bad value is a usage
//! error (exit 2) naming the valid ones, for every flag alike.

use allcnn_data::Split;
use clap::builder::{PossibleValuesParser, TypedValueParser};

/// `--split`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitArg {
    /// The training split.
    Train,
    /// The test split (`test/`, or `val/` in an image folder without one).
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// `bench --mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    /// An eval-mode forward.
    Infer,
    /// One whole training step.
    Train,
}

/// `data download DATASET`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetArg {
    /// CIFAR-10 (binary version).
    #[value(alias = "cifar-10")]
    Cifar10,
    /// CIFAR-100 (binary version).
    #[value(alias = "cifar-100")]
    Cifar100,
}

/// The first entry of `list` that an earlier one equals.
pub fn first_repeat<T: PartialEq>(list: &[T]) -> Option<&T> {
    list.iter()
        .enumerate()
        .find_map(|(i, v)| list[..i].contains(v).then_some(v))
}

/// A usage error (exit 2) when `list`, the values of `flag`, names one
/// twice: a method computed and drawn twice is a slip, not a request.
pub fn once_each<T: PartialEq + std::fmt::Display>(flag: &str, list: &[T]) -> anyhow::Result<()> {
    if let Some(twice) = first_repeat(list) {
        usage!("{flag}: {twice} is listed twice");
    }
    Ok(())
}

/// A wall-clock duration such as `2h30m`, `90min`, `45s` (humantime's
/// format), for `--time-limit`; at least one second.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a duration such as 2h30m, 90min or 45s"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!(
            "{s} is under a second: give a duration such as 2h30m, 90min or 45s"
        ));
    }
    Ok(d)
}

/// A count of 1 or more (`--epochs`, `--batch`, `--top-k`, ...), said in
/// words: clap's ranged parser printed "0 is not in
/// 1..18446744073709551615".
pub fn count<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let t = s.trim();
    let n: u64 = t.parse().map_err(|_| {
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            format!("{t} is too large")
        } else {
            format!("`{s}` is not a whole number: give 1 or more")
        }
    })?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// `--classes`: a count no class layer can exceed (the spec's channel
/// limit), so that a typo is a usage error naming the flag rather than an
/// invalid layer 9.
pub fn classes(s: &str) -> Result<usize, String> {
    let n: usize = count(s)?;
    let most = allcnn_models::SpecLimits::DEFAULT.channels;
    if n > most {
        return Err(format!(
            "{n} classes: a class layer has at most {most} channels"
        ));
    }
    Ok(n)
}

/// `data download --md5`: 32 hexadecimal digits, as `md5sum` prints them.
pub fn md5(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err("an MD5 is 32 hexadecimal digits (the first word `md5sum FILE` prints)".into())
    }
}

/// `data download --url`: an http:// or https:// URL with a host.
pub fn http_url(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .ok_or("only http:// and https:// URLs can be downloaded; for an archive already on this machine, copy it into --dir (it is then checked and extracted)")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL names no host".into());
    }
    Ok(s.to_string())
}

/// A Hugging Face repository id `OWNER/NAME`, for `export-hub --repo`:
/// each part 1-96 letters, digits, `-`, `_` or `.`, neither starting nor
/// ending with `-` or `.`, without `--` or `..` (the Hub's rules).
pub fn repo_id(s: &str) -> Result<String, String> {
    let part_ok = |p: &str| {
        (1..=96).contains(&p.len())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    match s.split_once('/') {
        Some((owner, name)) if part_ok(owner) && part_ok(name) => Ok(s.to_string()),
        _ => Err(format!(
            "`{s}` is not a Hub repository id: give OWNER/NAME, e.g. my-user/all-cnn-c-cifar10 (letters, digits, -, _ and .)"
        )),
    }
}

/// `s` when it is a non-empty run of ASCII letters, digits and `extra`,
/// else the error `refusal`.
fn id_of(s: &str, extra: &str, refusal: impl FnOnce() -> String) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(refusal())
    }
}

/// A license id for a model card's front matter (`mit`, `apache-2.0`,
/// `cc-by-4.0`, `other`): letters, digits, `-` and `.`, as the Hub's ids.
pub fn license_id(s: &str) -> Result<String, String> {
    id_of(s, "-.", || {
        format!("`{s}` is not a license id: give one of the Hub's, e.g. mit, apache-2.0 or cc-by-4.0 (letters, digits, - and .)")
    })
}

/// A Hub dataset id (`cifar10`, `uoft-cs/cifar10`) for a model card.
pub fn dataset_id(s: &str) -> Result<String, String> {
    if s.contains('/') {
        return repo_id(s);
    }
    id_of(s, "-_.", || {
        format!("`{s}` is not a Hub dataset id: give NAME or OWNER/NAME, e.g. cifar10 (letters, digits, -, _ and .)")
    })
}

/// The registered architectures (`allcnn models`), for `--model`.
pub fn model_name() -> impl TypedValueParser<Value = String> {
    PossibleValuesParser::new(allcnn_models::registry().iter().map(|m| m.name))
}

/// The training presets, for `train --preset`.
pub fn preset_name() -> impl TypedValueParser<Value = String> {
    PossibleValuesParser::new(allcnn_train::config::PRESETS.iter().map(|(name, _)| *name))
}

/// The CPU convolution backends ([`allcnn_models::ConvBackend::ALL`]), for `--conv`.
pub fn conv_backend() -> impl TypedValueParser<Value = allcnn_models::ConvBackend> {
    use allcnn_models::ConvBackend;
    PossibleValuesParser::new(ConvBackend::ALL.map(|(name, _)| name))
        .map(|s: String| ConvBackend::from_name(&s).expect("a name from ConvBackend::ALL"))
}

/// The precisions ([`allcnn_models::Precision::ALL`]), for `--precision`.
pub fn precision() -> impl TypedValueParser<Value = allcnn_models::Precision> {
    use allcnn_models::Precision;
    PossibleValuesParser::new(Precision::ALL.map(|(name, _)| name))
        .map(|s: String| Precision::from_name(&s).expect("a name from Precision::ALL"))
}

/// The attribution methods ([`allcnn_viz::Method::ALL`]), for `viz --method`.
pub fn method() -> impl TypedValueParser<Value = allcnn_viz::Method> {
    PossibleValuesParser::new(allcnn_viz::Method::ALL.map(|m| m.name()))
        .map(|s: String| s.parse().expect("a name from Method::ALL"))
}

/// Integrated Gradients' quadrature rules, for `viz --quadrature`.
pub fn quadrature() -> impl TypedValueParser<Value = allcnn_viz::Quadrature> {
    PossibleValuesParser::new(allcnn_viz::Quadrature::ALL.map(|q| q.name()))
        .map(|s: String| s.parse().expect("a name from Quadrature::ALL"))
}

/// SmoothGrad's aggregations, for `viz --smooth-kind`.
pub fn noise_aggregation() -> impl TypedValueParser<Value = allcnn_viz::NoiseAggregation> {
    use allcnn_viz::NoiseAggregation as A;
    PossibleValuesParser::new([A::Mean, A::MeanOfSquares, A::Variance].map(|a| a.name()))
        .map(|s: String| s.parse().expect("a name from NoiseAggregation"))
}

/// The sign modes of overlays, for `viz --sign`.
pub fn sign() -> impl TypedValueParser<Value = allcnn_viz::render::Sign> {
    use allcnn_viz::render::Sign;
    PossibleValuesParser::new(Sign::ALL.map(|s| s.name())).map(|s: String| {
        *Sign::ALL
            .iter()
            .find(|m| m.name() == s)
            .expect("a name from Sign::ALL")
    })
}

/// The colour maps of overlays, for `viz --colormap`.
pub fn colormap() -> impl TypedValueParser<Value = allcnn_viz::render::Colormap> {
    use allcnn_viz::render::Colormap;
    PossibleValuesParser::new(Colormap::ALL.map(|c| c.name())).map(|s: String| {
        *Colormap::ALL
            .iter()
            .find(|m| m.name() == s)
            .expect("a name from Colormap::ALL")
    })
}

#[cfg(test)]
mod tests {
    use super::{count, dataset_id, license_id, repo_id};

    #[test]
    fn classes_are_bounded_by_the_class_layer() {
        assert_eq!(super::classes("100").unwrap(), 100);
        assert!(super::classes("0").unwrap_err().contains("at least 1"));
        assert!(super::classes("100000000")
            .unwrap_err()
            .contains("at most 16384 channels"));
    }

    #[test]
    fn md5_and_url_are_checked_as_flags() {
        assert_eq!(
            super::md5(" C58F30108F718F92721AF3B95E74349A").unwrap(),
            "c58f30108f718f92721af3b95e74349a"
        );
        for bad in [
            "nothex",
            "c58f30108f718f92721af3b95e74349",
            "g58f30108f718f92721af3b95e74349a",
        ] {
            assert!(
                super::md5(bad).unwrap_err().contains("32 hexadecimal"),
                "{bad}"
            );
        }
        assert_eq!(
            super::http_url("HTTP://mirror.example/c.tar.gz").unwrap(),
            "HTTP://mirror.example/c.tar.gz"
        );
        for (bad, says) in [
            ("ftp://x/c.tar.gz", "only http:// and https://"),
            ("notaurl", "only http:// and https://"),
            ("https://", "names no host"),
            ("http:///c.tar.gz", "names no host"),
        ] {
            assert!(super::http_url(bad).unwrap_err().contains(says), "{bad}");
        }
    }

    #[test]
    fn counts_are_said_in_words() {
        assert_eq!(count::<u64>("3"), Ok(3));
        assert_eq!(count::<usize>(" 64"), Ok(64));
        assert_eq!(count::<u64>("0").unwrap_err(), "must be at least 1");
        assert!(count::<u64>("-2")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(count::<u64>("2.5")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(count::<u64>("99999999999999999999")
            .unwrap_err()
            .contains("is too large"));
    }

    #[test]
    fn card_ids_are_refused_where_the_hub_would_refuse_them() {
        for ok in ["mit", "apache-2.0", "cc-by-4.0", "other"] {
            assert_eq!(license_id(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "mit license", "mit:\n x", "\"mit\""] {
            assert!(license_id(bad).is_err(), "{bad:?}");
        }
        for ok in ["cifar10", "uoft-cs/cifar10", "imagenet-1k"] {
            assert_eq!(dataset_id(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "a b", "a/b/c", "x\ny"] {
            assert!(dataset_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repo_ids_follow_the_hubs_rules() {
        for ok in ["me/all-cnn-c", "Org_1/model.v2", "a/b"] {
            assert_eq!(repo_id(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "not a repo",
            "noslash",
            "a/b/c",
            "/name",
            "owner/",
            "-me/x",
            "me/x.",
            "me/a--b",
            "me/a..b",
            "me/na\u{e9}me",
        ] {
            let err = repo_id(bad).unwrap_err();
            assert!(err.contains("OWNER/NAME"), "{bad}: {err}");
        }
    }
}
