/* A stand-in for NCCL's logger: NCCL's ncclDebugLogger_t is C-variadic,
 * which stable Rust cannot define, so the harness links this. Lines are
 * kept in memory for assertions and echoed when PLUGIN_TESTS_ECHO_LOG=1. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char lines[1 << 20];
static size_t used;

void airamp_test_logger(int level, unsigned long flags, const char *file, int line, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  (void)flags;
  (void)file;
  (void)line;
  const char *echo = getenv("PLUGIN_TESTS_ECHO_LOG");
  if (echo && echo[0] == '1') fprintf(stderr, "[nccl-log %d] %s\n", level, buf);
  pthread_mutex_lock(&lock);
  int n = snprintf(lines + used, sizeof lines - used, "%d %s\n", level, buf);
  if (n > 0 && used + (size_t)n < sizeof lines) used += (size_t)n;
  pthread_mutex_unlock(&lock);
}

/* Copies the captured log into `out` (NUL-terminated); returns its length. */
size_t airamp_test_log(char *out, size_t cap) {
  pthread_mutex_lock(&lock);
  size_t n = used < cap - 1 ? used : cap - 1;
  memcpy(out, lines, n);
  out[n] = 0;
  pthread_mutex_unlock(&lock);
  return n;
}
