// BLAKE3 on the GPU, over bytes already in device memory.
//
// The hash is the standard unkeyed BLAKE3 (https://github.com/BLAKE3-team/BLAKE3-specs):
// 1 KiB chunks, each compressed block by block into a chaining value, then a
// binary tree of parent nodes. Building the tree level by level, pairing nodes
// left to right and carrying an odd last node up unchanged, gives the same
// tree as the spec's "largest power of two on the left" rule.
//
// mv_blake3_chunks: one thread per chunk, 256 chunks per block; the block
//   reduces its chunks' values in shared memory to one node (a complete subtree
//   of 256 chunks, or the input's last partial subtree) written to `nodes`.
//   When the whole input fits in one block (`root` = 1), the final compression
//   carries the ROOT flag and node 0 is the digest.
// mv_blake3_reduce: one block per input, reducing its nodes (two or more) level
//   by level to the root; writes the 32-byte digest of input b to out[8 * b].
//
// Build: nvcc -ptx -arch=compute_75 -O3 -o blake3.ptx blake3.cu (see
// scripts/build_kernels.sh); MV_HOST_TEST builds a CPU emulation of both
// kernels for checking the tree logic without a GPU.

#include <stdint.h>

#ifdef MV_HOST_TEST
#define MV_FN static inline
#else
#define MV_FN __device__ __forceinline__
#endif

#define MV_CHUNK_START 1u
#define MV_CHUNK_END 2u
#define MV_PARENT 4u
#define MV_ROOT 8u
#define MV_CHUNK_LEN 1024ull
#define MV_BLOCK_CHUNKS 256

#ifdef MV_HOST_TEST
static const uint32_t MV_IV[8] = {
#else
__constant__ uint32_t MV_IV[8] = {
#endif
    0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
    0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

MV_FN uint32_t mv_rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

#define MV_G(a, b, c, d, x, y)            \
    do {                                  \
        a = a + b + (x);                  \
        d = mv_rotr(d ^ a, 16);           \
        c = c + d;                        \
        b = mv_rotr(b ^ c, 12);           \
        a = a + b + (y);                  \
        d = mv_rotr(d ^ a, 8);            \
        c = c + d;                        \
        b = mv_rotr(b ^ c, 7);            \
    } while (0)

// One round on the state v with message words m, then m permuted in place for the next.
#define MV_ROUND(v, m)                                                  \
    do {                                                                \
        MV_G(v[0], v[4], v[8], v[12], m[0], m[1]);                      \
        MV_G(v[1], v[5], v[9], v[13], m[2], m[3]);                      \
        MV_G(v[2], v[6], v[10], v[14], m[4], m[5]);                     \
        MV_G(v[3], v[7], v[11], v[15], m[6], m[7]);                     \
        MV_G(v[0], v[5], v[10], v[15], m[8], m[9]);                     \
        MV_G(v[1], v[6], v[11], v[12], m[10], m[11]);                   \
        MV_G(v[2], v[7], v[8], v[13], m[12], m[13]);                    \
        MV_G(v[3], v[4], v[9], v[14], m[14], m[15]);                    \
        uint32_t t0 = m[2], t1 = m[6], t2 = m[3], t3 = m[10], t4 = m[7], \
                 t5 = m[0], t6 = m[4], t7 = m[13], t8 = m[1], t9 = m[11], \
                 t10 = m[12], t11 = m[5], t12 = m[9], t13 = m[14],      \
                 t14 = m[15], t15 = m[8];                               \
        m[0] = t0; m[1] = t1; m[2] = t2; m[3] = t3; m[4] = t4;          \
        m[5] = t5; m[6] = t6; m[7] = t7; m[8] = t8; m[9] = t9;          \
        m[10] = t10; m[11] = t11; m[12] = t12; m[13] = t13;             \
        m[14] = t14; m[15] = t15;                                       \
    } while (0)

// cv <- first half of compress(cv, m, counter, len, flags); m is clobbered.
MV_FN void mv_compress(uint32_t cv[8], uint32_t m[16], uint64_t counter, uint32_t len,
                       uint32_t flags) {
    uint32_t v[16];
    for (int i = 0; i < 8; i++) v[i] = cv[i];
    v[8] = MV_IV[0]; v[9] = MV_IV[1]; v[10] = MV_IV[2]; v[11] = MV_IV[3];
    v[12] = (uint32_t)counter; v[13] = (uint32_t)(counter >> 32);
    v[14] = len; v[15] = flags;
    MV_ROUND(v, m); MV_ROUND(v, m); MV_ROUND(v, m); MV_ROUND(v, m);
    MV_ROUND(v, m); MV_ROUND(v, m); MV_ROUND(v, m);
    for (int i = 0; i < 8; i++) cv[i] = v[i] ^ v[i + 8];
}

MV_FN void mv_parent(const uint32_t* left, const uint32_t* right, uint32_t out[8], uint32_t flags) {
    uint32_t m[16];
    uint32_t cv[8];
    for (int i = 0; i < 8; i++) { m[i] = left[i]; m[i + 8] = right[i]; cv[i] = MV_IV[i]; }
    mv_compress(cv, m, 0, 64, MV_PARENT | flags);
    for (int i = 0; i < 8; i++) out[i] = cv[i];
}

// Chaining value of chunk `c` of data[0:len]; `root` when this chunk is the whole input.
MV_FN void mv_chunk(const uint8_t* data, uint64_t len, uint64_t c, int root, uint32_t cv[8]) {
    uint64_t start = c * MV_CHUNK_LEN;
    uint64_t clen = len - start < MV_CHUNK_LEN ? len - start : MV_CHUNK_LEN;
    int nblocks = clen == 0 ? 1 : (int)((clen + 63) / 64);
    for (int i = 0; i < 8; i++) cv[i] = MV_IV[i];
    for (int b = 0; b < nblocks; b++) {
        uint64_t off = start + (uint64_t)b * 64;
        uint32_t blen = (uint32_t)(clen - (uint64_t)b * 64 < 64 ? clen - (uint64_t)b * 64 : 64);
        uint32_t m[16];
        if (blen == 64) {
#ifdef MV_HOST_TEST
            for (int i = 0; i < 16; i++) {
                const uint8_t* p = data + off + 4 * i;
                m[i] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                       ((uint32_t)p[3] << 24);
            }
#else
            const uint4* p = (const uint4*)(data + off);  // chunks start 1 KiB-aligned
            for (int i = 0; i < 4; i++) {
                uint4 w = p[i];
                m[4 * i] = w.x; m[4 * i + 1] = w.y; m[4 * i + 2] = w.z; m[4 * i + 3] = w.w;
            }
#endif
        } else {
            for (int i = 0; i < 16; i++) m[i] = 0;
            for (uint32_t i = 0; i < blen; i++) m[i / 4] |= (uint32_t)data[off + i] << (8 * (i % 4));
        }
        uint32_t flags = (b == 0 ? MV_CHUNK_START : 0u) |
                         (b == nblocks - 1 ? MV_CHUNK_END | (root ? MV_ROOT : 0u) : 0u);
        mv_compress(cv, m, c, blen, flags);
    }
}

#ifndef MV_HOST_TEST

extern "C" __global__ void __launch_bounds__(MV_BLOCK_CHUNKS)
mv_blake3_chunks(const uint8_t* data, unsigned long long len, uint32_t* nodes, int root) {
    __shared__ uint32_t cvs[MV_BLOCK_CHUNKS][9];  // 9: no bank conflicts between neighbours
    unsigned long long nchunks = len == 0 ? 1 : (len + MV_CHUNK_LEN - 1) / MV_CHUNK_LEN;
    unsigned long long base = (unsigned long long)blockIdx.x * MV_BLOCK_CHUNKS;
    int tid = threadIdx.x;
    int n = (int)(nchunks - base < MV_BLOCK_CHUNKS ? nchunks - base : MV_BLOCK_CHUNKS);
    int whole = root && nchunks <= MV_BLOCK_CHUNKS;
    if (tid < n) {
        uint32_t cv[8];
        mv_chunk(data, len, base + tid, whole && nchunks == 1, cv);
        for (int i = 0; i < 8; i++) cvs[tid][i] = cv[i];
    }
    __syncthreads();
    while (n > 1) {
        int pairs = n / 2;
        uint32_t out[8];
        if (tid < pairs) {
            uint32_t flags = (whole && n == 2) ? MV_ROOT : 0u;
            mv_parent(cvs[2 * tid], cvs[2 * tid + 1], out, flags);
        }
        __syncthreads();
        if (tid < pairs) for (int i = 0; i < 8; i++) cvs[tid][i] = out[i];
        if ((n & 1) && tid == 0) for (int i = 0; i < 8; i++) cvs[pairs][i] = cvs[n - 1][i];
        __syncthreads();
        n = pairs + (n & 1);
    }
    if (tid < 8) nodes[(unsigned long long)blockIdx.x * 8 + tid] = cvs[0][tid];
}

// Input b has counts[b] >= 2 nodes at nodes + 8 * first[b]; scratch mirrors nodes.
extern "C" __global__ void mv_blake3_reduce(uint32_t* nodes, uint32_t* scratch,
                                            const unsigned long long* first,
                                            const unsigned long long* counts, uint32_t* out) {
    unsigned long long n = counts[blockIdx.x];
    uint32_t* src = nodes + 8 * first[blockIdx.x];
    uint32_t* dst = scratch + 8 * first[blockIdx.x];
    while (n > 1) {
        unsigned long long pairs = n / 2;
        for (unsigned long long p = threadIdx.x; p < pairs; p += blockDim.x) {
            uint32_t o[8];
            mv_parent(src + 16 * p, src + 16 * p + 8, o, n == 2 ? MV_ROOT : 0u);
            for (int i = 0; i < 8; i++) dst[8 * p + i] = o[i];
        }
        if ((n & 1) && threadIdx.x == 0)
            for (int i = 0; i < 8; i++) dst[8 * pairs + i] = src[8 * (n - 1) + i];
        __syncthreads();
        uint32_t* t = src; src = dst; dst = t;
        n = pairs + (n & 1);
    }
    if (threadIdx.x < 8) out[8 * blockIdx.x + threadIdx.x] = src[threadIdx.x];
}

#else  // MV_HOST_TEST: the same two kernels, emulated on the CPU; prints the hex digest of stdin.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void host_chunks_block(const uint8_t* data, uint64_t len, uint32_t* nodes, int root,
                              uint64_t block) {
    static uint32_t cvs[MV_BLOCK_CHUNKS][8];
    uint64_t nchunks = len == 0 ? 1 : (len + MV_CHUNK_LEN - 1) / MV_CHUNK_LEN;
    uint64_t base = block * MV_BLOCK_CHUNKS;
    int n = (int)(nchunks - base < MV_BLOCK_CHUNKS ? nchunks - base : MV_BLOCK_CHUNKS);
    int whole = root && nchunks <= MV_BLOCK_CHUNKS;
    for (int t = 0; t < n; t++) mv_chunk(data, len, base + t, whole && nchunks == 1, cvs[t]);
    while (n > 1) {
        int pairs = n / 2;
        static uint32_t outs[MV_BLOCK_CHUNKS][8];
        for (int t = 0; t < pairs; t++)
            mv_parent(cvs[2 * t], cvs[2 * t + 1], outs[t], (whole && n == 2) ? MV_ROOT : 0u);
        for (int t = 0; t < pairs; t++) memcpy(cvs[t], outs[t], 32);
        if (n & 1) memcpy(cvs[pairs], cvs[n - 1], 32);
        n = pairs + (n & 1);
    }
    memcpy(nodes + block * 8, cvs[0], 32);
}

int main(void) {
    size_t cap = 1 << 20, len = 0;
    uint8_t* data = (uint8_t*)malloc(cap);
    size_t got;
    while ((got = fread(data + len, 1, cap - len, stdin)) > 0) {
        len += got;
        if (len == cap) data = (uint8_t*)realloc(data, cap *= 2);
    }
    uint64_t nchunks = len == 0 ? 1 : (len + MV_CHUNK_LEN - 1) / MV_CHUNK_LEN;
    uint64_t nblocks = (nchunks + MV_BLOCK_CHUNKS - 1) / MV_BLOCK_CHUNKS;
    uint32_t* nodes = (uint32_t*)malloc(nblocks * 32);
    uint32_t* scratch = (uint32_t*)malloc(nblocks * 32);
    for (uint64_t b = 0; b < nblocks; b++) host_chunks_block(data, len, nodes, 1, b);
    uint32_t* src = nodes;
    uint32_t* dst = scratch;
    uint64_t n = nblocks;
    while (n > 1) {
        uint64_t pairs = n / 2;
        for (uint64_t p = 0; p < pairs; p++)
            mv_parent(src + 16 * p, src + 16 * p + 8, dst + 8 * p, n == 2 ? MV_ROOT : 0u);
        if (n & 1) memcpy(dst + 8 * pairs, src + 8 * (n - 1), 32);
        uint32_t* t = src; src = dst; dst = t;
        n = pairs + (n & 1);
    }
    for (int i = 0; i < 32; i++) printf("%02x", ((uint8_t*)src)[i]);
    printf("\n");
    return 0;
}

#endif
