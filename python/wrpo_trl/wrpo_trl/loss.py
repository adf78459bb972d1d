"""The preference objectives of docs/method.md, as `wrpo-train wrpo --loss` computes them.

For each example: policy log-probs log pi(y|x) summed over response tokens, token
counts |y|, the frozen reference's log pi_ref(y|x); h(y) = log pi(y|x) - log pi_ref(y|x)
and the implicit reward r(y) = beta * h(y).

  wrpo:        -log sig( alpha r(y_ws) + (1 - alpha) r(y_wt) - r(y_l) )
  dpo:         -log sig( r(y_w) - r(y_l) )                 y_w = y_wt (dpo_chosen target) or y_ws
  simpo:       -log sig( beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma )
  ipo:         ( h(y_w) - h(y_l) - 1/(2 beta) )^2
  wrpo-simpo, wrpo-ipo: the chosen term is the alpha-weighted mix of the y_ws and y_wt terms
  sigmoid-mix: the mean of dpo on (y_ws, y_l) and on (y_wt, y_l)

With label smoothing eps, -log sig(z) becomes -(1 - eps) log sig(z) - eps log sig(-z).
"""
import torch.nn.functional as F

LOSSES = ("wrpo", "dpo", "simpo", "ipo", "wrpo-simpo", "wrpo-ipo", "sigmoid-mix")
PAIRWISE = ("dpo", "simpo", "ipo")


def default_beta(loss):
    """beta from each method's source, as wrpo-train's defaults."""
    if loss in ("simpo", "wrpo-simpo"):
        return 2.0
    if loss in ("ipo", "wrpo-ipo"):
        return 0.1
    return 0.01


def needs_reference(loss):
    return loss not in ("simpo", "wrpo-simpo")


def uses_alpha(loss):
    return loss not in PAIRWISE


def responses(loss, dpo_chosen):
    """The responses the objective reads, in the order the batch stacks them."""
    if loss in PAIRWISE:
        return ("y_ws", "y_l") if dpo_chosen == "source" else ("y_wt", "y_l")
    return ("y_ws", "y_wt", "y_l")


def objective(loss, *, beta, alpha, policy, reference, lengths, dpo_chosen="target", gamma=0.0, label_smoothing=0.0):
    """Per-example losses (B,) and the rewards behind them ({y: (B,)}; SimPO's
    length-normalised ones for its forms). `policy`, `reference` and `lengths`
    map each response of `responses(loss, dpo_chosen)` to a (B,) tensor."""

    def h(y):
        if needs_reference(loss):
            return policy[y] - reference[y]
        return policy[y] / lengths[y]

    def sigmoid_loss(z):
        out = -(1 - label_smoothing) * F.logsigmoid(z)
        return out - label_smoothing * F.logsigmoid(-z) if label_smoothing else out

    r = {y: beta * h(y) for y in responses(loss, dpo_chosen)}
    chosen = "y_ws" if dpo_chosen == "source" else "y_wt"
    mix = (lambda: alpha * r["y_ws"] + (1 - alpha) * r["y_wt"]) if uses_alpha(loss) else None
    if loss == "wrpo":
        losses = sigmoid_loss(mix() - r["y_l"])
    elif loss == "dpo":
        losses = sigmoid_loss(r[chosen] - r["y_l"])
    elif loss == "simpo":
        losses = sigmoid_loss(r[chosen] - r["y_l"] - gamma)
    elif loss == "wrpo-simpo":
        losses = sigmoid_loss(mix() - r["y_l"] - gamma)
    elif loss == "ipo":
        losses = ((r[chosen] - r["y_l"]) / beta - 1 / (2 * beta)) ** 2
    elif loss == "wrpo-ipo":
        losses = ((mix() - r["y_l"]) / beta - 1 / (2 * beta)) ** 2
    elif loss == "sigmoid-mix":
        losses = 0.5 * (sigmoid_loss(r["y_ws"] - r["y_l"]) + sigmoid_loss(r["y_wt"] - r["y_l"]))
    else:
        raise ValueError(f"unknown loss {loss!r}; one of {', '.join(LOSSES)}")
    return losses, r


def metrics(loss, alpha, rewards, policy, dpo_chosen="target"):
    """The metrics wrpo-train logs (docs/method.md, "Metrics"), per example
    (detached (B,) tensors), keyed as TRL logs them (`rewards/chosen`, ...)."""
    if loss in PAIRWISE:
        w = 1.0 if dpo_chosen == "source" else 0.0
    elif loss == "sigmoid-mix":
        w = 0.5
    else:
        w = alpha

    def mix(d, w):
        """w of y_ws and 1 - w of y_wt, of those the objective read."""
        return sum(([w * d["y_ws"]] if "y_ws" in d else []) + ([(1 - w) * d["y_wt"]] if "y_wt" in d else []))

    chosen = mix(rewards, w)
    # logps/chosen as the official trainer reports it: the plain mean of y_ws and y_wt.
    logps_chosen = mix(policy, 0.5 if "y_ws" in policy and "y_wt" in policy else w)
    out = {
        "rewards/chosen": chosen,
        "rewards/rejected": rewards["y_l"],
        "rewards/accuracies": (chosen > rewards["y_l"]).float(),
        "rewards/margins": chosen - rewards["y_l"],
        "logps/chosen": logps_chosen,
        "logps/rejected": policy["y_l"],
    }
    if "y_ws" in rewards:
        out["rewards/source_chosen"] = rewards["y_ws"]
        out["rewards/source_accuracies"] = (rewards["y_ws"] > rewards["y_l"]).float()
        out["logps/source_chosen"] = policy["y_ws"]
    if "y_wt" in rewards:
        out["rewards/target_chosen"] = rewards["y_wt"]
        out["rewards/pivot_accuracies"] = (rewards["y_wt"] > rewards["y_l"]).float()
        out["logps/target_chosen"] = policy["y_wt"]
    return {k: v.detach() for k, v in out.items()}
