"""Runners: how an effect's process is started, watched, signalled and reaped, and found again after a crash.

Everything that touches a process goes through this interface: the supervisor above it never reads
`/proc`, sends a signal or opens a file an effect wrote. `LocalRunner` runs processes on this
machine; a remote runner (a Ray cluster) sits beside it behind the same interface, so nothing above
it may assume the process is local.
"""
