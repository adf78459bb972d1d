//! Training seeds pooled: models scored as NAME@SEED (one training seed
//! each) pool into NAME, prompt by prompt, in the reward table and in the
//! judge's alike, under one rule for a model that is itself named NAME.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

/// NAME -> the models NAME@SEED among `models`, whatever else is there.
pub(crate) fn seed_groups<'a>(models: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, Vec<String>> {
    let mut pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for model in models {
        if let Some((name, _seed)) = model.rsplit_once('@') {
            pools.entry(name.to_string()).or_default().push(model.clone());
        }
    }
    pools
}

/// The pools of `models`: NAME -> its seeds NAME@SEED (a single seed pools
/// too, so that NAME means the same model in every table). A model named
/// NAME beside seeds NAME@SEED is refused, naming both: the pool would take
/// its name.
pub(crate) fn seed_pools<'a>(models: impl IntoIterator<Item = &'a String>) -> Result<BTreeMap<String, Vec<String>>> {
    let models: BTreeSet<&String> = models.into_iter().collect();
    let pools = seed_groups(models.iter().copied());
    if let Some((name, seeds)) = pools.iter().find(|(name, _)| models.contains(name)) {
        bail!("model '{name}' is scored, and so are its seeds {seeds:?}: the pool of NAME@SEED aliases is named NAME, so rename one");
    }
    Ok(pools)
}

/// A pool's rows by prompt, from its seeds' (`seeds`, each a model's rows by
/// prompt): on every prompt any seed has a row, `combine` of the seeds' rows
/// there, in seed order; `None` leaves the prompt out of the pool.
pub(crate) fn pool_prompts<T>(seeds: &[&BTreeMap<String, T>], mut combine: impl FnMut(&String, &[&T]) -> Option<T>) -> BTreeMap<String, T> {
    let ids: BTreeSet<&String> = seeds.iter().flat_map(|s| s.keys()).collect();
    ids.into_iter()
        .filter_map(|id| {
            let rows: Vec<&T> = seeds.iter().filter_map(|s| s.get(id)).collect();
            combine(id, &rows).map(|row| (id.clone(), row))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pool_by_name_and_a_model_of_the_pools_name_is_refused() {
        let models: Vec<String> = ["base", "wrpo@1", "wrpo@2", "dpo@7"].map(String::from).to_vec();
        let pools = seed_pools(&models).unwrap();
        assert_eq!(
            pools.into_iter().collect::<Vec<_>>(),
            [("dpo".into(), vec!["dpo@7".into()]), ("wrpo".into(), vec!["wrpo@1".to_string(), "wrpo@2".into()])]
        );
        let clash: Vec<String> = [&models[..], &["wrpo".to_string()]].concat();
        let err = seed_pools(&clash).unwrap_err().to_string();
        assert!(err.contains("'wrpo'") && err.contains("\"wrpo@1\", \"wrpo@2\"") && err.contains("rename one"), "{err}");
    }

    #[test]
    fn a_pool_combines_each_prompt_any_seed_has() {
        let a: BTreeMap<String, f64> = [("p0".into(), 1.0), ("p1".into(), 2.0)].into();
        let b: BTreeMap<String, f64> = [("p1".into(), 4.0), ("p2".into(), 5.0)].into();
        let mean = pool_prompts(&[&a, &b], |_, rows| Some(rows.iter().copied().sum::<f64>() / rows.len() as f64));
        assert_eq!(mean.into_iter().collect::<Vec<_>>(), [("p0".into(), 1.0), ("p1".into(), 3.0), ("p2".into(), 5.0)]);
        let all_seeds = pool_prompts(&[&a, &b], |_, rows| (rows.len() == 2).then(|| rows[0] + rows[1]));
        assert_eq!(all_seeds.into_iter().collect::<Vec<_>>(), [("p1".into(), 6.0)]);
    }
}
