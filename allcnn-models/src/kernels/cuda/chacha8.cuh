// ChaCha8 keystream words, as rand_chacha's ChaCha8Rng draws them: the
// 32-byte seed as eight little-endian key words, a 64-bit block counter in
// state words 12-13 and the 64-bit stream in words 14-15; word position p
// is word p % 16 of block p / 16. Plain C with ALLCNN_HD in front, so the
// same text compiles for the GPU (NVRTC) and for the CPU test that checks
// it against rand_chacha (allcnn-models, `dropout_kernel_is_rand_chacha`).
#ifndef ALLCNN_HD
#define ALLCNN_HD
#endif

#define ALLCNN_ROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
#define ALLCNN_QR(a, b, c, d)                      \
    a += b; d ^= a; d = ALLCNN_ROTL(d, 16);        \
    c += d; b ^= c; b = ALLCNN_ROTL(b, 12);        \
    a += b; d ^= a; d = ALLCNN_ROTL(d, 8);         \
    c += d; b ^= c; b = ALLCNN_ROTL(b, 7);

// The 16 words of block `block` of (key, stream), 4 double rounds.
ALLCNN_HD static inline void allcnn_chacha8_block(const unsigned int key[8], unsigned long long stream,
                                                  unsigned long long block, unsigned int out[16]) {
    unsigned int s[16] = {
        0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        (unsigned int)block, (unsigned int)(block >> 32),
        (unsigned int)stream, (unsigned int)(stream >> 32),
    };
    unsigned int x[16];
    for (int i = 0; i < 16; ++i) x[i] = s[i];
    for (int r = 0; r < 4; ++r) {
        ALLCNN_QR(x[0], x[4], x[8], x[12]);
        ALLCNN_QR(x[1], x[5], x[9], x[13]);
        ALLCNN_QR(x[2], x[6], x[10], x[14]);
        ALLCNN_QR(x[3], x[7], x[11], x[15]);
        ALLCNN_QR(x[0], x[5], x[10], x[15]);
        ALLCNN_QR(x[1], x[6], x[11], x[12]);
        ALLCNN_QR(x[2], x[7], x[8], x[13]);
        ALLCNN_QR(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; ++i) out[i] = x[i] + s[i];
}

// Inverted-dropout mask entries [0, len) from word position `start`:
// entry i is 0 where word start + i is below `threshold`, `keep` otherwise
// (DropoutRng::mask on the CPU). `first_block` .. blocks are this call's.
ALLCNN_HD static inline void allcnn_dropout_block(float* out, unsigned long long len,
                                                  const unsigned int key[8], unsigned long long stream,
                                                  unsigned long long start, unsigned long long block,
                                                  unsigned int threshold, float keep) {
    unsigned int words[16];
    allcnn_chacha8_block(key, stream, block, words);
    for (int k = 0; k < 16; ++k) {
        unsigned long long pos = block * 16 + k;
        if (pos < start || pos - start >= len) continue;
        out[pos - start] = words[k] < threshold ? 0.0f : keep;
    }
}
