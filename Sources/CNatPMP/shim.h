#include <sys/time.h>
#include <sys/select.h>
#include <natpmp.h>
