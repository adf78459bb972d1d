use wrpo_common::{
    prompts::{Prompt, Split},
    samples::FinishReason,
    scored::ScoredSample,
    sft::SftExample,
    Message, Role,
};
use wrpo_scorer::select::{
    check_scores, make_pairs, reference_sft, sft_split, source_gain, truncated_shares, ByPrompt, Dropped, PairOptions, Strategy,
};

fn prompt(id: &str, split: Split) -> Prompt {
    Prompt { prompt_id: id.into(), messages: vec![Message::new(Role::User, format!("question {id}"))], reference: None, split, origin: "t".into() }
}

fn scored(id: &str, model: &str, i: u32, response: &str, reward: f64) -> ScoredSample {
    ScoredSample {
        prompt_id: id.into(),
        model: model.into(),
        sample_index: i,
        response: response.into(),
        response_tokens: 1,
        finish_reason: FinishReason::Stop,
        reward,
        reward_model: "rm".into(),
    }
}

#[test]
fn sft_split_takes_a_third_of_train_prompts_with_their_best_source_response() {
    let prompts: Vec<Prompt> = (0..900).map(|i| prompt(&format!("p{i}"), if i % 10 == 0 { Split::Eval } else { Split::Train })).collect();
    let mut scores = Vec::new();
    for p in prompts.iter().skip(1) {
        scores.push(scored(&p.prompt_id, "a", 0, "a0", 0.1));
        scores.push(scored(&p.prompt_id, "b", 3, "b3", 0.7));
        scores.push(scored(&p.prompt_id, "a", 1, "a1", 0.7)); // ties with b3: model name decides
        let mut skipped = scored(&p.prompt_id, "c", 0, "", 9.0);
        skipped.finish_reason = FinishReason::Skipped;
        scores.push(skipped);
    }
    let source = ByPrompt::new(&scores);
    let split = sft_split(&prompts, &source, 1.0 / 3.0, 42, false);
    assert_eq!(split.unscored, 0); // p0 is eval, so never counted
    assert_eq!(split.sft.len() + split.preference.len(), 810);
    assert!((230..310).contains(&split.sft.len()), "{} SFT of 810", split.sft.len());
    for ex in &split.sft {
        assert_eq!((ex.source_model.as_str(), ex.source_sample_index, ex.response.as_str()), ("a", 1, "a1"));
    }
    assert!(split.preference.iter().all(|p| p.split == Split::Train));

    let again = sft_split(&prompts, &source, 1.0 / 3.0, 42, false);
    assert_eq!(again.sft, split.sft);
    assert_ne!(sft_split(&prompts, &source, 1.0 / 3.0, 7, false).sft, split.sft);
}

fn wrpo() -> PairOptions {
    PairOptions { strategy: Strategy::Wrpo, allow_truncated: false, min_gap: 0.0, max_gap: f64::INFINITY, source_best_of: None }
}

#[test]
fn wrpo_pairs_take_the_best_source_and_the_best_and_worst_target_responses() {
    let prompts: Vec<Prompt> = ["ok", "same", "tie", "one", "nosrc"].iter().map(|id| prompt(id, Split::Train)).collect();
    let mut source = vec![];
    for id in ["ok", "same", "tie", "one"] {
        source.push(scored(id, "big", 0, "big0", 0.2));
        source.push(scored(id, "big", 1, "big1", 0.9));
        source.push(scored(id, "mid", 0, "mid0", 0.5));
    }
    let target = vec![
        scored("ok", "sft", 0, "t0", 0.3),
        scored("ok", "sft", 1, "t1", -0.4),
        scored("ok", "sft", 2, "t2", 0.8),
        scored("same", "sft", 0, "x", 0.3),
        scored("same", "sft", 1, "x", 0.1),
        scored("tie", "sft", 0, "u", 0.5),
        scored("tie", "sft", 1, "v", 0.5),
        scored("one", "sft", 0, "w", 0.5),
        scored("nosrc", "sft", 0, "a", 0.5),
        scored("nosrc", "sft", 1, "b", 0.1),
    ];
    let (pairs, dropped) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &wrpo());
    assert_eq!(pairs.len(), 1);
    let p = &pairs[0];
    assert_eq!((p.y_ws.as_str(), p.y_ws_model.as_str(), p.y_ws_reward), ("big1", "big", 0.9));
    assert_eq!((p.y_wt.as_str(), p.y_wt_sample_index, p.y_wt_reward), ("t2", 2, 0.8));
    assert_eq!((p.y_l.as_str(), p.y_l_sample_index, p.y_l_reward), ("t1", 1, -0.4));
    assert_eq!(p.messages, prompts[0].messages);
    assert_eq!(p.ref_logp_y_ws, None);
    assert_eq!(dropped, Dropped { no_source_sample: 1, fewer_than_two_samples: 1, all_identical: 1, best_worst_tie: 1, ..Dropped::default() });
}

#[test]
fn fusechat_pairs_stay_within_one_source_and_the_gap_band() {
    let prompts: Vec<Prompt> = ["in", "wide"].iter().map(|id| prompt(id, Split::Train)).collect();
    let source = vec![
        scored("in", "a", 0, "a0", 0.50),
        scored("in", "a", 1, "a1", 0.45), // gap 0.05: kept
        scored("in", "b", 0, "b0", 0.90),
        scored("in", "b", 1, "b1", 0.10), // gap 0.8: out of band
        scored("wide", "a", 0, "a0", 0.9),
        scored("wide", "a", 1, "a1", 0.1),
    ];
    let opts = PairOptions { strategy: Strategy::Fusechat, allow_truncated: false, min_gap: 0.01, max_gap: 0.1, source_best_of: None };
    let (pairs, dropped) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&[]), &opts);
    assert_eq!(pairs.len(), 1);
    let p = &pairs[0];
    assert_eq!((p.y_ws.as_str(), p.y_wt.as_str(), p.y_l.as_str()), ("a0", "a0", "a1"));
    assert_eq!(dropped.gap_out_of_band, 1);
}

#[test]
fn a_reward_that_is_not_a_number_is_never_chosen() {
    let prompts = [prompt("p", Split::Train)];
    let source = [scored("p", "a", 0, "good", 0.5), scored("p", "a", 1, "nan", f64::NAN)];
    let target = [scored("p", "t", 0, "best", 0.9), scored("p", "t", 1, "nan", f64::NAN), scored("p", "t", 2, "worst", -0.9)];
    let (pairs, _) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &wrpo());
    assert_eq!((pairs[0].y_ws.as_str(), pairs[0].y_wt.as_str(), pairs[0].y_l.as_str()), ("good", "best", "worst"));
}

/// A response cut off by the token limit is neither chosen nor rejected by
/// default, on both sides, so cut-off answers cannot all land on the
/// rejected side; --allow-truncated lets it be any of y_ws, y_wt and y_l.
#[test]
fn a_truncated_response_is_neither_chosen_nor_rejected_unless_allowed() {
    let prompts = [prompt("p", Split::Train), prompt("q", Split::Train), prompt("r", Split::Train)];
    let cut = |mut s: ScoredSample| {
        s.finish_reason = FinishReason::Length;
        s
    };
    let source = [
        cut(scored("p", "a", 0, "long source", 0.9)),
        scored("p", "a", 1, "source", 0.5),
        cut(scored("q", "a", 0, "cut", 0.9)),
        scored("r", "a", 0, "r source", 0.5),
    ];
    let target = [
        cut(scored("p", "t", 0, "long target", 0.9)),
        scored("p", "t", 1, "target", 0.4),
        cut(scored("p", "t", 2, "long worst", -0.9)),
        scored("p", "t", 3, "short worst", 0.1),
        scored("q", "t", 0, "x", 0.1),
        scored("q", "t", 1, "y", 0.2),
        // r: one complete target sample is too few to pair.
        scored("r", "t", 0, "r complete", 0.3),
        cut(scored("r", "t", 1, "r cut", -0.3)),
    ];
    let (src, tgt) = (ByPrompt::new(&source), ByPrompt::new(&target));
    let (pairs, dropped) = make_pairs(&prompts, &src, &tgt, &wrpo());
    assert_eq!(pairs.len(), 1);
    assert_eq!((pairs[0].y_ws.as_str(), pairs[0].y_wt.as_str(), pairs[0].y_l.as_str()), ("source", "target", "short worst"));
    assert_eq!(dropped, Dropped { only_truncated: 2, ..Dropped::default() }, "q: no complete source sample; r: one complete target sample");
    let (pairs, _) = make_pairs(&prompts, &src, &tgt, &PairOptions { allow_truncated: true, ..wrpo() });
    assert_eq!(pairs.len(), 3);
    assert_eq!((pairs[0].y_ws.as_str(), pairs[0].y_wt.as_str(), pairs[0].y_l.as_str()), ("long source", "long target", "long worst"));
    let split = sft_split(&prompts, &src, 1.0, 42, false);
    assert_eq!((split.sft.len(), split.only_truncated), (2, 1));
    assert_eq!(split.sft[0].response, "source");
    // The cut-off share per model, for the warning and the summary.
    let shares = truncated_shares(&[&source, &target], 0.2, false);
    assert_eq!((shares["a"], shares["t"]), (0.5, 3.0 / 8.0));
}

#[test]
fn source_gain_counts_where_y_ws_outscores_y_wt_and_a_tie_as_a_tie() {
    let prompts: Vec<Prompt> = ["p", "q", "r", "s"].iter().map(|id| prompt(id, Split::Train)).collect();
    let source = [scored("p", "a", 0, "a", 0.9), scored("q", "b", 0, "b", 0.1), scored("r", "a", 0, "a", 0.2), scored("s", "a", 0, "a", 0.5)];
    let target: Vec<ScoredSample> =
        ["p", "q", "r", "s"].iter().flat_map(|id| [scored(id, "t", 0, "hi", 0.5), scored(id, "t", 1, "lo", 0.0)]).collect();
    let (pairs, _) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &wrpo());
    let gain = source_gain(&pairs);
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-12;
    // Source a: a win (p), a loss (r) and a tie (s, 0.5 against 0.5).
    assert_eq!(gain["a"]["pairs"], 3);
    assert!(close(&gain["a"]["y_ws_beats_y_wt"], 1.0 / 3.0));
    assert!(close(&gain["a"]["ties"], 1.0 / 3.0));
    assert!(close(&gain["a"]["y_wt_beats_y_ws"], 1.0 / 3.0));
    // The tie is half a win, not a source loss.
    assert!(close(&gain["a"]["win_rate"], 0.5));
    assert!(close(&gain["a"]["mean_gap"], (0.4 - 0.3 + 0.0) / 3.0));
    assert!(close(&gain["all"]["win_rate"], 1.5 / 4.0));
    assert!(close(&gain["all"]["mean_gap"], (0.4 - 0.4 - 0.3 + 0.0) / 4.0));
}

#[test]
fn source_best_of_k_takes_the_first_eligible_samples_only() {
    let prompts = vec![prompt("p", Split::Train)];
    // Sample 0 is cut off (not eligible), so the first eligible one is sample 1.
    let mut cut = scored("p", "a", 0, "cut", 0.95);
    cut.finish_reason = FinishReason::Length;
    let source = [cut, scored("p", "a", 2, "third", 0.9), scored("p", "a", 1, "second", 0.3), scored("p", "a", 3, "fourth", 0.6)];
    let target = [scored("p", "t", 0, "hi", 0.5), scored("p", "t", 1, "lo", 0.0)];
    let y_ws = |k: Option<usize>| {
        let (pairs, _) = make_pairs(&prompts, &ByPrompt::new(&source), &ByPrompt::new(&target), &PairOptions { source_best_of: k, ..wrpo() });
        pairs[0].y_ws.clone()
    };
    assert_eq!(y_ws(None), "third");
    assert_eq!(y_ws(Some(1)), "second");
    assert_eq!(y_ws(Some(2)), "third");
    assert_eq!(y_ws(Some(10)), "third");
}

#[test]
fn scores_of_two_reward_models_or_a_key_twice_are_refused() {
    let path = std::path::Path::new("scores");
    let mut other = scored("p", "a", 1, "x", 0.1);
    other.reward_model = "another-rm".into();
    let rows = [scored("p", "a", 0, "y", 0.2), other];
    let err = check_scores(&[(path, &rows)]).unwrap_err().to_string();
    assert!(err.contains("'another-rm'") && err.contains("'rm'"), "{err}");
    let twice = [scored("p", "a", 0, "y", 0.2), scored("p", "a", 0, "y again", 0.3)];
    let err = check_scores(&[(path, &twice)]).unwrap_err().to_string();
    assert!(err.contains("(prompt_id p, model a, sample_index 0) is scored twice"), "{err}");
    let target = [scored("p", "t", 0, "z", 0.0)];
    assert!(check_scores(&[(path, &rows[..1]), (path, &target)]).is_ok());
}

#[test]
fn a_stronger_source_learns_references_of_train_prompts_disjoint_from_every_other_split() {
    let with_reference = |id: &str, split: Split| Prompt { reference: Some(format!("answer {id}")), ..prompt(id, split) };
    let prompts = vec![
        with_reference("s1", Split::Train),
        with_reference("s2", Split::Train),
        with_reference("p1", Split::Train),
        with_reference("v1", Split::Validation),
        with_reference("e1", Split::Eval),
    ];
    let example = |id: &str| SftExample {
        prompt_id: id.into(),
        messages: prompts.iter().find(|p| p.prompt_id == id).map_or(vec![], |p| p.messages.clone()),
        response: "y_ws".into(),
        source_model: "a".into(),
        source_sample_index: 3,
        reward: Some(0.5),
    };
    let preference = vec![prompts[2].clone()];
    let set = reference_sft(&prompts, &[example("s1"), example("s2")], &preference).unwrap();
    assert_eq!(set.iter().map(|e| (e.prompt_id.as_str(), e.response.as_str())).collect::<Vec<_>>(), [("s1", "answer s1"), ("s2", "answer s2")]);
    assert!(set.iter().all(|e| e.source_model == "reference" && e.reward.is_none()));

    let refused = |sft: &[SftExample], prompts: &[Prompt]| reference_sft(prompts, sft, &preference).unwrap_err().to_string();
    let err = refused(&[example("s1"), example("p1")], &prompts);
    assert!(err.contains("p1") && err.contains("preference prompt p1"), "{err}");
    let err = refused(&[example("v1")], &prompts);
    assert!(err.contains("v1") && err.contains("Validation"), "{err}");
    // The same conversation as a test prompt, under another id.
    let mut copy = with_reference("s3", Split::Train);
    copy.messages = prompts[4].messages.clone();
    let mut with_copy = prompts.clone();
    with_copy.push(copy);
    let err = refused(&[example("s1"), SftExample { prompt_id: "s3".into(), ..example("s1") }], &with_copy);
    assert!(err.contains("s3") && err.contains("eval prompt e1"), "{err}");
    let mut unreferenced = prompts.clone();
    unreferenced[0].reference = None;
    assert!(refused(&[example("s1")], &unreferenced).contains("no reference"));
    assert!(refused(&[example("nosuch")], &prompts).contains("no prompt"));
}
