"""Training and inference speed of the trunk in float32 against Keras' mixed_bfloat16 policy.

    python -m tests.benchmarks.precision_speed [--stage-convs 2] [--rounds 2]

Why: TensorFlow reports AVX512-BF16 and AMX on some of the VMs this project runs on, where
bfloat16 convolutions may be cheaper; CPU training time limits how many recipes a session
can measure. Each (policy, round) runs in a fresh process (a Keras dtype policy is global),
the policies alternating so that machine noise falls on both. Times 20 patch-training steps
(batches of 64 patches of 64 px, the patch model of ``mammo train``) and the trunk over 8
images of 512 px, after one warm-up of each. Random inputs: speed only, nothing about what
the numerics do to accuracy, which needs its own paired measurement. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

POLICIES = ("float32", "mixed_bfloat16")


def measure(policy: str, stage_convs: int) -> dict[str, float]:
    import keras

    from models.architecture import build_patch_model, build_trunk

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(1)
    trunk = build_trunk("trunk", stage_convs=stage_convs)
    model = build_patch_model(trunk, 64)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    patches = rng.random((64 * 20, 64, 64, 1), dtype=np.float32)
    labels = rng.integers(0, 3, len(patches))
    images = rng.random((8, 512, 512, 1), dtype=np.float32)
    model.fit(patches[:128], labels[:128], batch_size=64, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(patches, labels, batch_size=64, epochs=1, verbose=0)
    train = time.perf_counter() - started
    trunk.predict(images, verbose=0)
    started = time.perf_counter()
    trunk.predict(images, verbose=0)
    return {"train_s": train, "infer_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage-convs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.stage_convs)))
        return
    times: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    for _ in range(args.rounds):
        for policy in POLICIES:
            out = subprocess.run(
                [sys.executable, "-m", "tests.benchmarks.precision_speed", "--child", policy,
                 "--stage-convs", str(args.stage_convs)],
                check=True, capture_output=True, text=True).stdout
            times[policy].append(json.loads(out.strip().splitlines()[-1]))
    medians = {p: {k: float(np.median([t[k] for t in runs])) for k in ("train_s", "infer_s")}
               for p, runs in times.items()}
    print(f"| policy (stage convs {args.stage_convs}, median of {args.rounds}) | "
          "20 training steps (s) | trunk, 8 x 512 px (s) | speed-up train / infer |")
    print("|---|---|---|---|")
    base = medians["float32"]
    for policy, med in medians.items():
        print(f"| {policy} | {med['train_s']:.2f} | {med['infer_s']:.2f} | "
              f"{base['train_s'] / med['train_s']:.2f}x / "
              f"{base['infer_s'] / med['infer_s']:.2f}x |")


if __name__ == "__main__":
    main()
