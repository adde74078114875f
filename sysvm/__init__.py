"""sysvm: builder of Apache CloudStack system VM templates."""
