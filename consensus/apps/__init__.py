"""Applications behind the consensus core: validate(block) before voting, commit after."""
