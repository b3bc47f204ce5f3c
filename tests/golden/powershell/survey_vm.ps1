param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'survey_vm'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Read only: what a VM is and holds. Its disks come from Hyper-V (Get-VHD: size, parent). Its folders are
    # listed inside the running guest over PowerShell Direct (Get-ChildItem, nothing opened for writing),
    # or, when the VM is off, on its OS disk mounted read-only on the host. Each named folder is counted;
    # files in the profile folders (Desktop, Documents, ...) are user files; every other file outside the
    # named folders is reported too, so nothing on the machine goes unseen.
    $Vm = 'NDXGEM'
    $Folders = [ordered]@{'data' = @(,'C:\data'); 'var' = @(,'C:\LabVIEW Modules\var'); 'settings' = @(,'C:\Instrument\Settings'); 'software' = @(,'C:\LabVIEW Modules'); 'system' = @('C:\Windows', 'C:\$Recycle.Bin')}
    $UserRoots = @(,'C:\Users')
    $UserFolders = @('Desktop', 'Documents')
    $request = ConvertTo-Json -Compress -Depth 4 -InputObject ([ordered]@{
        folders = $Folders; user_roots = @($UserRoots); user_folders = @($UserFolders) })
    $list = {
        param([string] $RequestJson, [string] $Root)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $req = ConvertFrom-Json -InputObject $RequestJson
        function Local([string] $WinPath) { return Join-Path -Path $Root -ChildPath $WinPath.Substring(3) }
        $known = New-Object System.Collections.Generic.List[string]
        $folders = [ordered]@{}
        foreach ($kind in $req.folders.PSObject.Properties.Name) {
            foreach ($p in @($req.folders.$kind)) {
                $known.Add(([string]$p).ToLowerInvariant())
                $here = Local $p
                $items = @()
                if (Test-Path -LiteralPath $here -PathType Container) {
                    $items = @(Get-ChildItem -LiteralPath $here -Recurse -File -Force -ErrorAction SilentlyContinue)
                }
                $folders[[string]$p] = [ordered]@{ kind = $kind; exists = (Test-Path -LiteralPath $here -PathType Container)
                    files = $items.Count; bytes = [long](($items | Measure-Object -Property Length -Sum).Sum) }
            }
        }
        $users = New-Object System.Collections.Generic.List[object]
        $other = New-Object System.Collections.Generic.List[object]
        $profiles = @($req.user_folders | ForEach-Object { ([string]$_).ToLowerInvariant() })
        foreach ($file in @(Get-ChildItem -LiteralPath $Root -Recurse -File -Force -ErrorAction SilentlyContinue)) {
            $win = 'C:\' + $file.FullName.Substring($Root.TrimEnd('\').Length + 1)
            $low = $win.ToLowerInvariant()
            $isUser = $false
            foreach ($r in @($req.user_roots)) {
                $prefix = ([string]$r).ToLowerInvariant() + '\'
                if ($low.StartsWith($prefix)) {
                    $parts = $low.Substring($prefix.Length).Split('\')
                    if ($parts.Count -gt 2 -and $profiles -contains $parts[1]) { $isUser = $true }
                }
            }
            if ($isUser) { $users.Add([ordered]@{ path = $win; bytes = $file.Length }); continue }
            $inKnown = $false
            foreach ($k in $known) { if ($low -eq $k -or $low.StartsWith($k + '\')) { $inKnown = $true; break } }
            if (-not $inKnown) { $other.Add([ordered]@{ path = $win; bytes = $file.Length }) }
        }
        ConvertTo-Json -Compress -Depth 5 -InputObject ([ordered]@{
            folders = $folders; user_files = @($users.ToArray()); other = @($other.ToArray()) })
    }
    $found = Get-VM -Name $Vm -ErrorAction SilentlyContinue
    $Result['exists'] = ($null -ne $found)
    if ($null -ne $found) {
        $Result['generation'] = [int]$found.Generation
        $Result['power'] = [string]$found.State
        $drives = @(Get-VMHardDiskDrive -VM $found | Sort-Object -Property @('ControllerType', 'ControllerNumber', 'ControllerLocation'))
        $Result['disks'] = @($drives | ForEach-Object {
            $vhd = Get-VHD -Path $_.Path
            [ordered]@{ slot = $_.ControllerLocation; controller = ([string]$_.ControllerType + ' ' + $_.ControllerNumber)
                path = $_.Path; parent = $vhd.ParentPath; bytes = [long]$vhd.FileSize; label = $null } })
        $boot = @($drives | Where-Object { $_.ControllerLocation -eq 0 } | Select-Object -First 1)
        $answer = $null
        if ([string]$found.State -eq 'Running') {
            $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ScriptBlock $list -ArgumentList $request, 'C:\'
        }
        elseif ($boot.Count -eq 1) {
            $mounted = Mount-ImagingVolume -Path $boot[0].Path -ReadOnly
            try { $answer = & $list $request ($mounted.Folder + '\') }
            finally { Dismount-ImagingVolume -Mounted $mounted }
        }
        if ($null -ne $answer) {
            $seen = ConvertFrom-Json -InputObject ([string]$answer)
            $Result['folders'] = $seen.folders
            $Result['user_files'] = $seen.user_files
            $Result['other'] = $seen.other
        }
    }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
