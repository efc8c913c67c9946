/* The libsodium primitives of the encryption stage in a plain C loop, as a reference for
   docs/BENCHMARKS.md: 1 GiB in 1 MiB messages, one core, buffers reused.
   cc -O2 contrib/sodium_probe.c -o /tmp/sodium_probe -lsodium && /tmp/sodium_probe */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    if (sodium_init() < 0) return 1;
    const size_t n = 1 << 20;
    unsigned char *m = malloc(n), *c = malloc(n + 64), k[32], header[24], nonce[24] = {0};
    unsigned long long out;
    randombytes_buf(m, n);
    randombytes_buf(k, sizeof k);
    crypto_secretstream_xchacha20poly1305_state st;
    crypto_secretstream_xchacha20poly1305_init_push(&st, header, k);
    double t = now();
    for (int i = 0; i < 1024; i++) crypto_secretstream_xchacha20poly1305_push(&st, c, &out, m, n, NULL, 0, 0);
    printf("libsodium secretstream XChaCha20-Poly1305 (C loop): %.0f MB/s\n", 1024.0 * n / (now() - t) / 1e6);
    t = now();
    for (int i = 0; i < 1024; i++) crypto_aead_xchacha20poly1305_ietf_encrypt(c, &out, m, n, NULL, 0, NULL, nonce, k);
    printf("libsodium XChaCha20-Poly1305 IETF (C loop): %.0f MB/s\n", 1024.0 * n / (now() - t) / 1e6);
    if (crypto_aead_aes256gcm_is_available()) {
        t = now();
        for (int i = 0; i < 1024; i++) crypto_aead_aes256gcm_encrypt(c, &out, m, n, NULL, 0, NULL, nonce, k);
        printf("libsodium AES-256-GCM (C loop): %.0f MB/s\n", 1024.0 * n / (now() - t) / 1e6);
    } else {
        printf("libsodium AES-256-GCM: not available (no AES-NI)\n");
    }
    return 0;
}
