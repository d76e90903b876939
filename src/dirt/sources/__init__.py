"""Change sources: where records come from besides `dirt submit`.

`git` reads commits with the git CLI (`dirt submit --git`), `hook` installs the post-receive
hook and reads what it posts, `webhooks` verifies GitHub and GitLab push events, `watch` finds
new files in a folder. Each turns what it learned into a `push.Push` or straight into
documents in the original's format (`push.commit_documents`, `watch.file_documents`); the
service stores them with `push.only_new` so the same commit or file never makes two records.
"""
