int64_t av_ledger_run(const int64_t *row, const int64_t *nonce, const int64_t *col, const int64_t *flow,
                  const uint8_t *withdraw, const int64_t *line, const int64_t *size, const uint8_t *shrink,
                  int64_t n_assets, int64_t max_position, int64_t limit, int64_t *col_nonce, int64_t *col_cash,
                  int64_t *col_size, uint64_t n);
