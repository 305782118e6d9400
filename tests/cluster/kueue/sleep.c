/* The test pods' workload: sleep for argv[1] seconds (fractions allowed), then exit 0; SIGTERM/SIGINT exit 0
 * at once. Built static by tests/cluster/kueue.py into an image FROM scratch, as the pause image is. */
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void stop(int signo) {
  (void)signo;
  _exit(0);
}

int main(int argc, char **argv) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  double s = argc > 1 ? atof(argv[1]) : 0;
  struct timespec left = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&left, &left) != 0) {
  }
  return 0;
}
