"""Process-level tuning and environment: thread counts of every CPU runtime (``threads``), glibc
malloc settings (``malloc``), the torch device a user asked for (``devices``), wall-clock
times of named steps (``clock``) and the stop signals a command ends on, SIGINT and SIGTERM alike
(``signals``)."""
