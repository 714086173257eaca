"""The challenge's parameter rule, in one place for the core, the stages and the shipped
solution. Depends on nothing, so the torch-only students can import it."""

PARAM_LIMIT = 1_821_085  # the shipped model must have strictly fewer trainable parameters


def count_params(model) -> int:
    """Trainable parameters, counted exactly as the challenge counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
