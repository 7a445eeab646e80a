int av_ed25519_verify(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets, const uint8_t *sigs, const uint32_t *order, uint32_t use_order, uint8_t *out, uint64_t n);
int av_ed25519_verify_single(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets, const uint8_t *sigs, uint8_t *out, uint64_t n);
int av_ed25519_key_is_safe(const uint8_t *pks, uint8_t *out, uint64_t n);
int av_ed25519_verify_all(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets, const uint8_t *sigs, uint8_t *out, uint64_t n);
