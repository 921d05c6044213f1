"""fastattn.integrations.transformers exports its API and nothing else:
the public names of the module (``dir()`` without leading underscores) are
exactly ``__all__``, and each is what the docs say it is."""

import inspect

from support import require


def test_public_names_are_all():
    require("torch", "the transformers backend runs on torch (the 'torch' extra)")
    from fastattn.integrations import transformers as fa_hf

    public = {n for n in dir(fa_hf) if not n.startswith("_")}
    assert public == set(fa_hf.__all__), sorted(public ^ set(fa_hf.__all__))
    assert len(fa_hf.__all__) == len(set(fa_hf.__all__))
    assert fa_hf.NAME == "fastattn"
    for name in ("register", "attention_forward", "plan_mask"):
        fn = getattr(fa_hf, name)
        assert inspect.isfunction(fn) and fn.__module__ == fa_hf.__name__ and fn.__doc__
    # the annotations keep torch's names for readers (strings, not evaluated)
    sig = inspect.signature(fa_hf.attention_forward)
    assert sig.parameters["query"].annotation == "torch.Tensor"

