int av_sha256_many(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n);
int av_merkle_leaves(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n);
int av_merkle_level(const uint8_t *below, uint64_t count, uint8_t *above, uint64_t n);
int av_set_threads(int32_t threads);
