"""Study: do results depend on torch's intra-op thread count?  (Why ``build-default`` pins it: ``--threads``.)

Fine-tunes each mode for ``--steps`` steps on one task of the bundle (its stored images, as ``bench.finetune_cost``
does) at each of ``--counts`` intra-op thread counts, in this process, and reports whether the task vector is
bit-for-bit the one trained at the first count; also whether one batch's gradient of every θ0 tensor under the
full model is.  The thread count changes how some CPU kernels split their reductions (LayerNorm's and the patch
convolution's weight gradients), so modes that train those weights can differ.

    python -m bench.thread_bits --bundle precomputed/default --json bench/results/thread_bits.json
"""

from __future__ import annotations

from bench._common import emit, machine, parser, set_threads, table


def main(argv=None) -> dict:
    p = parser("bit-for-bit dependence of fine-tuning on torch's intra-op thread count")
    p.add_argument("--modes", nargs="*", default=["full", "attn", "linear", "mlp"])
    p.add_argument("--counts", nargs="+", type=int, default=[2, 1, 3, 4], help="thread counts; the first is the reference")
    p.add_argument("--task", help="whose head and images to use (default: the first task)")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    set_threads(None)
    import torch
    import torch.nn.functional as F

    from arith.bundle import load_bundle
    from arith.cost import set_intra_op_threads
    from arith.data import Split
    from arith.finetune import finetune
    from arith.specs import FinetuneConfig

    b = load_bundle(args.bundle)
    task = args.task or b.task_names[0]
    data = b.data[task]
    images = torch.cat([data[s].images for s in ("val", "test") if s in data])
    labels = torch.cat([data[s].labels for s in ("val", "test") if s in data])
    before = torch.get_num_threads()
    rows = []
    try:
        ref_grad = None
        for n in args.counts:  # one batch's gradient of θ0 under the full model
            set_intra_op_threads(n)
            params = {k: v.detach().clone().requires_grad_(True) for k, v in b.base.params.items()}
            x = b.base.preprocess(images[:64])
            loss = F.cross_entropy(b.heads[task].logits(b.base.features(params, x)), labels[:64])
            grad = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            ref_grad = ref_grad or grad
            differ = sorted(k for k in grad if not torch.equal(grad[k], ref_grad[k]))
            rows.append({"what": "θ0 gradient, one batch", "threads": n, "bit-identical": not differ,
                         "tensors differing": len(differ), "e.g.": differ[0] if differ else ""})
        for mode in args.modes:
            ref = None
            for n in args.counts:
                set_intra_op_threads(n)
                cfg = FinetuneConfig(mode=mode, steps=args.steps, batch_size=64, lr=1e-3, warmup_steps=3, seed=0)
                tv = finetune(b.base, b.heads[task], Split(images, labels), cfg, task=task).vector.tensors
                ref = ref or tv
                differ = sorted(k for k in tv if not torch.equal(tv[k], ref[k]))
                rows.append({"what": f"{mode} τ, {args.steps} steps", "threads": n, "bit-identical": not differ,
                             "tensors differing": len(differ), "e.g.": differ[0] if differ else ""})
    finally:
        set_intra_op_threads(before)
    res = {"task": task, "counts": args.counts, "steps": args.steps, "rows": rows, "machine": machine()}
    emit(args, res, table(rows))
    return res


if __name__ == "__main__":
    main()
