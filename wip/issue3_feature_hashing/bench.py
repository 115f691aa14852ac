import random, string, time, sys
import numpy as np, torch, xxhash
sys.path.insert(0, "/tmp/fh")
from test_fh import m
torch.set_num_threads(1)
rng = random.Random(0)
alpha = string.ascii_letters + string.digits + "éü中😀"
vals = ["".join(rng.choices(alpha, k=rng.randint(5, 40))) for _ in range(1_000_000)]
for v in vals: v.encode()  # not needed by C path (it caches its own utf-8); fair to python too
nb = 1_000_003
def best(f, k=5):
    ts = []
    for _ in range(k):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)
h = xxhash.xxh64_intdigest
tpy = best(lambda: [h(s.encode(), 0) % nb for s in vals], 3)
tc = best(lambda: torch.from_dlpack(m.hash_strings(vals, nb)))
assert torch.from_dlpack(m.hash_strings(vals[:1000], nb)).tolist() == [h(s.encode(), 0) % nb for s in vals[:1000]]
print(f"hash_strings 1M: C {tc*1e3:.1f} ms | py loop (encode) {tpy*1e3:.0f} ms -> {tpy/tc:.1f}x")
bv = [s.encode() for s in vals]
tcb = best(lambda: torch.from_dlpack(m.hash_strings(bv, nb)))
tpyb = best(lambda: [h(s, 0) % nb for s in bv], 3)
print(f"hash_strings 1M bytes: C {tcb*1e3:.1f} ms | py {tpyb*1e3:.0f} ms -> {tpyb/tcb:.1f}x")
x = torch.randint(-(2**63), 2**63 - 1, (10_000_000,), dtype=torch.int64)
tclone = best(lambda: x.clone(), 10)
for nbk in (nb, 1 << 20, 2**63 - 1):
    ti = best(lambda: torch.from_dlpack(m.hash_ids(x, nbk)), 10)
    dst = torch.empty_like(x)
    tin = best(lambda: m.hash_ids_into(x, dst, nbk), 10)
    print(f"hash_ids 10M nb={nbk}: {ti*1e3:.1f} ms (into: {tin*1e3:.1f} ms), clone {tclone*1e3:.1f} ms -> {ti/tclone:.2f}x clone")
xt = x.reshape(1000, 10000).t()
print(f"hash_ids 10M transposed: {best(lambda: m.hash_ids(xt, nb), 3)*1e3:.1f} ms; xt.contiguous() {best(lambda: xt.contiguous(), 3)*1e3:.1f} ms")
