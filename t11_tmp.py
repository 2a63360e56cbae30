import torch, bitpress as bp, time, statistics, sys
torch.set_num_threads(2)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
dyn = bp.compile(m, (torch.randn(4,256),), target="llvm", quiet=True)
def t(fs, n=300):
    for f in fs:
        for _ in range(10): f()
    ts=[[] for _ in fs]
    for _ in range(n):
        for i,f in enumerate(fs):
            t0=time.perf_counter(); f(); ts[i].append(time.perf_counter()-t0)
    return [round(statistics.median(x)*1e3,3) for x in ts]
for b in (1,8,32):
    x=torch.randn(b,256)
    st = bp.compile(m, (x,), target="llvm", quiet=True, dynamic=None)
    print(b, t([lambda: st(x), lambda: dyn(x)]))
