import sys, numpy as np
from math import comb
def nd(r): return np.where(r < 10, 1 / np.log2(r + 2), 0.0)
def sign(a, b):
    d = nd(a) - nd(b); w, l = int((d > 0).sum()), int((d < 0).sum()); n = w + l
    k = min(w, l); p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
    return w, l, p
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
print("ndcg10 %.4f vs %.4f  hr10 %.4f vs %.4f  wins/losses/p" % (nd(a).mean(), nd(b).mean(), (a<10).mean(), (b<10).mean()), sign(a, b))
