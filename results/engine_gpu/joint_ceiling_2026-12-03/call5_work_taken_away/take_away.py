import sys
mode=sys.argv[1]
p='crates/uniattn/cuda/kernels.cu'
s=open(p).read()
def rep(old,new,count=1):
    global s
    assert s.count(old)==count, (old[:80], s.count(old))
    s=s.replace(old,new)
rep('''    float p[4];
    if (reuse) {''','''    float p[4];
    if (joint && (%s & 2)) {
      p[0] = p[1] = p[2] = p[3] = 0.01f;
    } else if (reuse) {''' % mode)
rep('''    const u32 p_hi0 = pack_pair(T{}, p[0], p[1]), p_lo0 = pack_rest<T>(p[0], p[1]);''','''    if (!(joint && (%s & 1))) {
    const u32 p_hi0 = pack_pair(T{}, p[0], p[1]), p_lo0 = pack_rest<T>(p[0], p[1]);''' % mode)
rep('''        mma_k16(T{}, acc[2 * c2 + j], p_lo0, p_lo2, vb[2 * j], vb[2 * j + 1]);
      }
    }
''','''        mma_k16(T{}, acc[2 * c2 + j], p_lo0, p_lo2, vb[2 * j], vb[2 * j + 1]);
      }
    }
    }
''')
open(p,'w').write(s)
